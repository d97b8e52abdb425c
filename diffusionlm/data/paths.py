"""Where the offline data lives.

Rule: the data folder is ``$DIFFUSIONLM_DATA`` when that variable is set (and non-empty), else
``<repository root>/../shared/data``, where the repository root is the folder that holds the
``diffusionlm`` package. Nothing here downloads or copies anything: files are read in place.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Union

ENV_VAR = "DIFFUSIONLM_DATA"

PathLike = Union[str, "os.PathLike[str]"]


def repo_root() -> Path:
    """The folder that contains the ``diffusionlm`` package (the repository checkout)."""
    return Path(__file__).resolve().parents[2]


def data_dir() -> Path:
    """``$DIFFUSIONLM_DATA`` if set, else ``<repo root>/../shared/data`` (not required to exist)."""
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        return Path(env).expanduser().resolve()
    return (repo_root() / ".." / "shared" / "data").resolve()


def data_path(*parts: PathLike, must_exist: bool = True) -> Path:
    """A path inside :func:`data_dir`; FileNotFoundError naming the full path when it is missing."""
    path = data_dir().joinpath(*map(str, parts))
    if must_exist and not path.exists():
        raise FileNotFoundError(
            f"{path} does not exist (data folder: {data_dir()}; set ${ENV_VAR} to point elsewhere)"
        )
    return path
