"""diffusionlm: discrete diffusion language models, one composable toolkit.

    import diffusionlm
    diffusionlm.compare(variants=[...])     # the comparison job (diffusionlm/compare.py)
"""


def __getattr__(name: str):
    if name == "compare":  # imported on first use; the module itself is callable
        import importlib

        return importlib.import_module(f"{__name__}.compare")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
