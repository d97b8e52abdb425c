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
import importlib
import importlib.abc
import importlib.util
import sys
import warnings

from . import samplers  # registers the package's samplers (they are above the composition)
from .lm import DiffusionLM
from .specs import build, declare_provider, register, to_dict

declare_provider("nll_bound", "diffusionlm.eval.bound")
for _operation in ("save_pretrained", "from_pretrained", "push_to_hub"):
    declare_provider(_operation, "diffusionlm.io.saving")
declare_provider("load_judge", "diffusionlm.io.hub")
declare_provider("load_model", "diffusionlm.io.hub")
declare_provider("load_causal_lm", "diffusionlm.io.fetch")  # the hf backbone's `path`: fetched names, GGUF
for _operation in ("build", "build_model", "build_process", "build_tokenizer", "load_run", "safetensors_errors"):
    declare_provider(f"runs.{_operation}", "diffusionlm.io.runs")

#: modules that moved, by their old names (kept importable, with a DeprecationWarning, for one release)
MOVED_MODULES = {"diffusionlm.hub": "diffusionlm.io.hub", "diffusionlm.fetch": "diffusionlm.io.fetch",
                 "diffusionlm.safeio": "diffusionlm.io.safeio", "diffusionlm.configcheck": "diffusionlm.config.check"}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """`import diffusionlm.hub` gives diffusionlm.io.hub itself (one module, not a copy)."""

    def find_spec(self, name, path=None, target=None):
        return importlib.util.spec_from_loader(name, self) if name in MOVED_MODULES else None

    def create_module(self, spec):
        warnings.warn(f"{spec.name} moved to {MOVED_MODULES[spec.name]}: import it from there", DeprecationWarning,
                      stacklevel=2)
        return importlib.import_module(MOVED_MODULES[spec.name])

    def exec_module(self, module):
        pass


sys.meta_path.insert(0, _MovedModules())  # first: an older install's files must not answer

__all__ = ["DiffusionLM", "build", "compare", "register", "to_dict"]


from importlib.metadata import PackageNotFoundError as _NotInstalled, version as _version

try:
    __version__ = _version("diffusionlm")  # the installed distribution's (pyproject.toml)
except _NotInstalled:  # pragma: no cover - run from a source tree that was never installed
    __version__ = "0+unknown"


def __getattr__(name: str):
    if name == "compare":  # imported on first use; the module itself is callable
        return importlib.import_module(f"{__name__}.compare")
    if f"{__name__}.{name}" in MOVED_MODULES:  # diffusionlm.hub and the others that moved (one release)
        warnings.warn(f"{__name__}.{name} moved to {MOVED_MODULES[f'{__name__}.{name}']}: import it from there",
                      DeprecationWarning, stacklevel=2)
        return importlib.import_module(MOVED_MODULES[f"{__name__}.{name}"])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
