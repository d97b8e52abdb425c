"""Training: the trainer, atomic checkpoints, distributed launch."""
from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .trainer import NonFiniteLossError, TrainConfig, Trainer

__all__ = ["NonFiniteLossError", "TrainConfig", "Trainer", "latest_checkpoint", "load_checkpoint", "save_checkpoint"]
