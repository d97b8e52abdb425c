"""diffusionlm: discrete diffusion language models, one composable toolkit.

    import diffusionlm
    lm = diffusionlm.DiffusionLM.from_dict({"name": "diffusion_lm", ...})   # the composition (lm.py)
    diffusionlm.register(MyProcess)         # a part defined outside the package, usable everywhere
    diffusionlm.compare(variants=[...])     # the comparison job (diffusionlm/compare.py)

This module is the top of the import layers (diffusionlm.specs's docstring): it names which module
does the late-bound operations of the core (`DiffusionLM.nll_bound` by the bound estimator,
saving / loading / the Hub by the io layer), imported when first used, so that importing the
composition loads neither.
"""
from .specs import build, declare_provider, register, to_dict
from .lm import DiffusionLM
from . import samplers  # registers the package's samplers (they are above the composition)

declare_provider("nll_bound", "diffusionlm.eval.bound")
for _operation in ("save_pretrained", "from_pretrained", "push_to_hub"):
    declare_provider(_operation, "diffusionlm.hub")

__all__ = ["DiffusionLM", "build", "compare", "register", "to_dict"]


def __getattr__(name: str):
    if name == "compare":  # imported on first use; the module itself is callable
        import importlib

        return importlib.import_module(f"{__name__}.compare")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
