"""Forward corruption processes, their exact marginals, losses and reverse steps."""
from ..specs import build, registry
from .absorb import Absorb
from .base import Corruption, Process, TokenSet
from .epsilon import EpsilonHybrid
from .hybrid import GammaHybrid, Uniform
from .structural import Structural

#: the registry of processes (diffusionlm.specs; a subclass with a name registers itself)
PROCESSES: dict[str, type[Process]] = registry("process")


def process(spec: "dict | Process") -> Process:
    """Build a process from its spec (`to_dict()`; round-trips through JSON), or pass one through
    (`diffusionlm.specs.build("process", spec)`). An older Uniform spec that carries
    "mask_id": null is read as Uniform's (it has no MASK)."""
    if isinstance(spec, dict) and spec.get("name") == "uniform" and "mask_id" in spec and spec["mask_id"] is None:
        spec = {k: v for k, v in spec.items() if k != "mask_id"}
    return build("process", spec)


__all__ = ["Absorb", "Corruption", "EpsilonHybrid", "GammaHybrid", "Process", "PROCESSES", "Structural", "TokenSet", "Uniform", "process"]
