"""Samplers: one interface, a registry by name. Importing this package registers every sampler."""
from .base import SAMPLERS, SampleOutput, Sampler, StepRecord, categorical, get_sampler, prepare_fixed, register_sampler

__all__ = ["SAMPLERS", "SampleOutput", "Sampler", "StepRecord", "categorical", "get_sampler", "prepare_fixed", "register_sampler"]
