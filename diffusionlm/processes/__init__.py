"""Forward corruption processes, their exact marginals, losses and reverse steps."""
from .absorb import Absorb
from .base import Corruption, Process, TokenSet
from .epsilon import EpsilonHybrid
from .hybrid import GammaHybrid, Uniform
from .structural import Structural

PROCESSES: dict[str, type[Process]] = {c.name: c for c in (Absorb, Uniform, GammaHybrid, EpsilonHybrid, Structural)}


def process(spec: "dict | Process") -> Process:
    """Build a process from a `config()` dict (round-trips through JSON), or pass one through."""
    from ..schedules.noise import noise_schedule

    if isinstance(spec, Process):
        return spec
    spec = dict(spec)
    name = spec.pop("name", None)
    if name not in PROCESSES:
        raise ValueError(f"unknown process {name!r}; known: {sorted(PROCESSES)}")
    if "noise" in spec:
        spec["noise"] = noise_schedule(spec["noise"])
    if name == "uniform":
        spec.pop("mask_id", None)
    return PROCESSES[name](**spec)


__all__ = ["Absorb", "Corruption", "EpsilonHybrid", "GammaHybrid", "Process", "PROCESSES", "Structural", "TokenSet", "Uniform", "process"]
