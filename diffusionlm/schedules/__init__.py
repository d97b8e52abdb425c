"""Scalar noise schedules and per-position hyperschedules."""
from .hyper import (
    ACTIVE,
    HYPERSCHEDULES,
    SETTLED,
    WORTHLESS,
    Block,
    Custom,
    Flat,
    Hyperschedule,
    LevelDraw,
    Quench,
    Retimed,
    SegmentDraw,
    Slide,
    StepSplit,
    hyperschedule,
    validate_table,
)
from .noise import NOISE_SCHEDULES, Cosine, Linear, LogLinear, NoiseSchedule, noise_schedule

__all__ = [
    "ACTIVE", "HYPERSCHEDULES", "SETTLED", "WORTHLESS", "Block", "Custom", "Flat", "Hyperschedule",
    "LevelDraw", "Quench", "Retimed", "SegmentDraw", "Slide", "StepSplit", "hyperschedule",
    "validate_table", "NOISE_SCHEDULES", "Cosine", "Linear", "LogLinear", "NoiseSchedule", "noise_schedule",
]
