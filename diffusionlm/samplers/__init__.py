"""Samplers: one interface, a registry by name. Importing this package registers every sampler."""
from .base import SAMPLERS, SampleOutput, Sampler, StepRecord, categorical, get_sampler, prepare_fixed, register_sampler

__all__ = ["SAMPLERS", "SampleOutput", "Sampler", "StepRecord", "categorical", "get_sampler", "prepare_fixed", "register_sampler"]
from . import lad  # registers LAD
from .driver import Step, drive  # shared step driver
from .mdlm import ACS, MDLM  # registers "mdlm", "acs"
from .sedd import SEDDAnalytic, SEDDEuler  # registers "sedd_analytic", "sedd_euler"
from .ar import AR  # registers "ar"
from .adaptive import Threshold  # registers "threshold"
from .remdm import ReMDM  # registers "remdm"

__all__ += ["Step", "drive", "MDLM", "ACS", "SEDDAnalytic", "SEDDEuler", "AR", "Threshold", "ReMDM"]
