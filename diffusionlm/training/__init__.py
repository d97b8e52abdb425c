"""Training: the trainer, atomic checkpoints, the run directory's lock and metrics, distributed launch."""
from .checkpoint import CheckpointFormatError, latest_checkpoint, load_checkpoint, load_model_weights, save_checkpoint
from .rundir import MetricsLog, RunDirInUse, RunDirLock
from .trainer import NonFiniteError, NonFiniteLossError, TrainConfig, Trainer, seed_everything

__all__ = [
    "CheckpointFormatError", "MetricsLog", "NonFiniteError", "NonFiniteLossError", "RunDirInUse", "RunDirLock",
    "TrainConfig", "Trainer", "latest_checkpoint", "load_checkpoint", "load_model_weights", "save_checkpoint",
    "seed_everything",
]
