"""The Hub client: a model name resolved to a local folder (a registered short name, an existing
path, or a hub id's snapshot: the local HF cache first, then the Hub), with one-line errors.
The lowest part of diffusionlm.io's loading (saving and the loader use it)."""
from __future__ import annotations

import os
import re
import socket
from importlib.metadata import version
from pathlib import Path
from typing import Any, Callable, Optional
from urllib.parse import urlparse

from huggingface_hub import constants, snapshot_download
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

from .fetch import hub_path

__all__ = ["ModelNotFoundError", "library_version", "MODEL_RESOLVERS", "register_resolver", "resolve_model_path"]


class ModelNotFoundError(FileNotFoundError):
    """A model name that is neither a local path nor reachable on the Hub."""


def library_version() -> str:
    try:
        return version("diffusionlm")
    except Exception:  # pragma: no cover - not installed
        return "0+unknown"


# ---------------------------------------------------------------------------------------------
# resolving a name to a local folder
# ---------------------------------------------------------------------------------------------
#: short-name resolvers, tried in order: `fn(name) -> local path or None`
MODEL_RESOLVERS: list = []


def register_resolver(fn: Callable[[str], "Optional[str | os.PathLike]"]) -> Callable:
    """Add a resolver (e.g. "smollm2" -> the directory `diffusionlm fetch smollm2` wrote)."""
    if fn not in MODEL_RESOLVERS:
        MODEL_RESOLVERS.append(fn)
    return fn


@register_resolver
def _fetched(name: str) -> "Optional[str]":
    """Names `diffusionlm fetch` knows ("smollm2") -> their converted folder (diffusionlm.io.fetch)."""
    return hub_path(name)


_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?$")


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hub endpoint answers a TCP connection (HF_HUB_OFFLINE: no)."""
    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=timeout).close()
        return True
    except OSError:
        return False


def _hub_snapshot(repo_id: str, **kw: Any) -> Path:
    """A hub model's local snapshot: the HF cache first, then the Hub (one-line errors)."""
    kw = {k: v for k, v in kw.items() if v is not None}
    only_local = kw.pop("local_files_only", False)
    force = kw.pop("force_download", False)
    if not force:
        try:
            return Path(snapshot_download(repo_id, local_files_only=True, **kw))
        except (LocalEntryNotFoundError, FileNotFoundError, OSError):
            pass
        except ValueError as err:  # an invalid repo id
            raise ModelNotFoundError(f"{repo_id}: not a local path, and not a valid hub id ({err})") from None
    if only_local or not _hub_reachable():
        raise ModelNotFoundError(f"{repo_id}: not found locally and no network: pass a local directory")
    try:
        return Path(snapshot_download(repo_id, force_download=force, **kw))
    except RepositoryNotFoundError:
        raise ModelNotFoundError(f"{repo_id}: no such model on the Hugging Face Hub (private? log in with `hf auth login`)") from None
    except (HfHubHTTPError, OSError) as err:
        raise ModelNotFoundError(f"{repo_id}: could not be downloaded from the Hub ({str(err).splitlines()[0]})") from None


def resolve_model_path(spec: "str | os.PathLike", **hub_kw: Any) -> Path:
    """A local folder (or file) for `spec`: a resolver's answer, an existing path, or a hub id's
    snapshot (module docstring, steps 1-3)."""
    name = os.fspath(spec)
    for fn in MODEL_RESOLVERS:
        out = fn(name)
        if out is not None:
            return Path(out)
    path = Path(name).expanduser()
    if path.exists():
        return path
    if _HUB_ID.match(name) and not name.startswith((".", "~")):
        return _hub_snapshot(name, **hub_kw)
    raise FileNotFoundError(f"{name}: no such file or directory (a model is a run directory with run.json, a saved "
                            "composition, a Hugging Face model directory, or a hub id)")
