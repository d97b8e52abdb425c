"""diffusionlm: discrete diffusion language models, one composable toolkit.

    import diffusionlm
    diffusionlm.compare(variants=[...])     # the comparison job (diffusionlm/compare.py)
"""


from importlib.metadata import PackageNotFoundError as _NotInstalled, version as _version

try:
    __version__ = _version("diffusionlm")  # the installed distribution's (pyproject.toml)
except _NotInstalled:  # pragma: no cover - run from a source tree that was never installed
    __version__ = "0+unknown"


def __getattr__(name: str):
    if name == "compare":  # imported on first use; the module itself is callable
        import importlib

        return importlib.import_module(f"{__name__}.compare")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
