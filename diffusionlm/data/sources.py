"""Documents from anything ``datasets`` reads: local files, folders, globs, saved datasets, ``hf:`` names.

    docs, desc = read_documents("notes/*.jsonl", "train", field="content")     # list of str
    rows, desc = stream_documents("big.txt", "train", unit="line")           # datasets.IterableDataset

A *source* is one of

* ``hf:<name>``: ``datasets.load_dataset(<name>)`` -- a hub id (needs the network or its local
  cache), the names of :data:`.corpus.HF_DATASETS` (mapped to their hub ids and fields), or a local
  dataset folder (a hub repository's layout, or a ``Dataset.save_to_disk`` folder, read with
  ``load_from_disk``). Its own splits are used.
* a local file, a folder (its files matching ``files``, default every non-hidden file), or a
  glob (``data/*.parquet``). The format follows the files' extension: ``.json`` / ``.jsonl`` ->
  the ``json`` builder, ``.csv`` / ``.tsv`` -> ``csv``, ``.parquet`` -> ``parquet``, ``.arrow``
  -> ``arrow``, anything else -> ``text`` (UTF-8), all files of a source in one format.
  Text files are read by ``unit``: ``file`` (one document per file), ``line`` (one per line) or
  ``paragraph`` (blank-line separated); the other formats give one document per row, from the
  column ``field`` (default ``text``).

**Splits.** When every file's name or folder says its split (``train``, ``validation`` /
``valid`` / ``val`` / ``dev``, ``test``; datasets' own conventions) those are the splits, and a
missing one is an error naming the ones there are. Otherwise several files split BY FILE as the
stdlib corpus does (sha1 of the relative path: bucket 0 test, 1 validation, else train), and one
file splits by ROW fraction 90 / 5 / 5 (a text file read whole: by character fraction, as
:func:`.corpus.load_corpus` does). ``split="all"`` is every document, in order.

**Errors.** Every bad case is ONE ``ValueError`` line naming the file (or source) and the field: a
path that does not exist, no file matching the pattern, a file that is not UTF-8 text (binary), a
file the builder cannot parse, a missing or non-text field, an empty split or an empty corpus.
"""
from __future__ import annotations

import codecs
import glob as globlib
import re
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import datasets

from .corpus import FRACTIONS, HF_DATASETS, _DETOKENIZERS, _identity, _norm_split, fraction_split, hash_split

__all__ = ["BUILDERS", "NAMED_SPLITS", "read_documents", "stream_documents", "resolve_source", "Source"]

#: file extension -> datasets builder (anything else: "text")
BUILDERS: Dict[str, str] = {".json": "json", ".jsonl": "json", ".csv": "csv", ".tsv": "csv", ".parquet": "parquet",
                            ".arrow": "arrow"}
#: datasets' split keywords in file / folder names
_SPLIT_WORDS = {"train": ("train", "training"), "validation": ("validation", "valid", "val", "dev"),
                "test": ("test", "testing", "eval")}
NAMED_SPLITS = "named by its files"
_UNITS = {"file": "document", "line": "line", "paragraph": "paragraph"}
_SNIFF_BYTES = 1 << 16


class Source:
    """A resolved source: where it is, its builder, and its files per split (local) or its name (hub)."""

    def __init__(self, spec: str, builder: str, files: Dict[str, List[str]], how: str, hub: Optional[dict] = None,
                 disk: Optional[str] = None):
        self.spec, self.builder, self.files, self.how, self.hub, self.disk = spec, builder, files, how, hub, disk

    def describe(self) -> Dict[str, Any]:
        n = sum(len(v) for v in self.files.values())
        return {"name": self.spec, "source": self.hub["path"] if self.hub else (self.disk or f"{n} local file(s)"),
                "format": self.builder, "splits": self.how, "detokenization": "none", "rule": "wrap"}


def _one_line(err: BaseException) -> str:
    while err.__cause__ is not None or (err.__context__ is not None and "datasets" in type(err).__module__):
        err = err.__cause__ or err.__context__
    text = str(err) or type(err).__name__
    return "; ".join(ln.strip() for ln in text.splitlines() if ln.strip())[:300]


def _split_of(rel: str) -> Optional[str]:
    """The split a file's relative path names (a word of its folders or its name), or None."""
    words = re.split(r"[/\\_.\-\s]+", rel.lower().rsplit(".", 1)[0])
    for split, keys in _SPLIT_WORDS.items():
        if any(w in keys for w in words):
            return split
    return None


def _local_files(spec: str, files: Optional[str]) -> Tuple[Path, List[Path]]:
    """(root, sorted files) of a local file, folder (files matching `files`) or glob."""
    path = Path(spec).expanduser()
    if path.is_file():
        if files:
            raise ValueError(f"{spec} is a file: data.files (a pattern) applies to folders")
        return path.parent, [path]
    if path.is_dir():
        pattern = files or "**/*"
        found = [p for p in path.glob(pattern) if p.is_file()
                 and not any(part.startswith(".") for part in p.relative_to(path).parts)]
        if not found:
            raise ValueError(f"{spec}: no files matching {pattern!r}")
        return path, sorted(found)
    if any(c in spec for c in "*?["):
        found = [Path(p) for p in globlib.glob(str(path), recursive=True) if Path(p).is_file()]
        if not found:
            raise ValueError(f"{spec}: no files match this pattern")
        root = Path(globlib.escape(str(path)).split("*")[0].split("?")[0].split("[")[0])
        return (root if root.is_dir() else root.parent), sorted(found)
    raise ValueError(f"{spec}: no such file or folder")


def _builder(paths: Sequence[Path]) -> str:
    kinds = {BUILDERS.get(p.suffix.lower(), "text") for p in paths}
    if len(kinds) > 1:
        ex = {BUILDERS.get(p.suffix.lower(), "text"): p for p in paths}
        raise ValueError("one format per source: " + ", ".join(f"{p} is {k}" for k, p in ex.items()))
    return kinds.pop()


def _check_text(path: Path) -> None:
    """ValueError naming the file when its first 64 KiB are not UTF-8 text (a binary file)."""
    try:
        with open(path, "rb") as f:
            head = f.read(_SNIFF_BYTES)
    except OSError as err:
        raise ValueError(f"{path}: cannot be read ({err.strerror or err})") from None

    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text (byte {head[err.start]:#04x} at offset {err.start}); "
                         "binary files are not read as text") from None
    if b"\x00" in head:
        raise ValueError(f"{path}: not text (it holds NUL bytes); binary files are not read as text")


def _is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file())


def resolve_source(spec: str, files: Optional[str] = None) -> Source:
    """The :class:`Source` of `spec` (module docstring), or ValueError in one line."""
    spec = str(spec)
    if spec.startswith("hf:"):
        name = spec[3:]
        if not name:
            raise ValueError("give a dataset after hf:, e.g. hf:wikitext2 or hf:path/to/local/dataset")
        if _is_saved_dataset(Path(name).expanduser()):
            return Source(spec, "arrow", {}, "the saved dataset's own", disk=str(Path(name).expanduser()))
        return Source(spec, "hub", {}, "the dataset's own", hub=dict(HF_DATASETS.get(name, {"path": name}), key=name))
    path = Path(spec).expanduser()
    if _is_saved_dataset(path):
        return Source(spec, "arrow", {}, "the saved dataset's own", disk=str(path))
    root, paths = _local_files(spec, files)
    builder = _builder(paths)
    if builder == "text":
        for p in paths:
            _check_text(p)
    rel = [p.relative_to(root).as_posix() if p.is_relative_to(root) else p.name for p in paths]
    named = [_split_of(r) for r in rel]
    if len(paths) > 1 and all(named):
        groups: Dict[str, List[str]] = {}
        for p, s in zip(paths, named):
            groups.setdefault(s, []).append(str(p))
        return Source(spec, builder, groups, NAMED_SPLITS)
    if len(paths) == 1:
        return Source(spec, builder, {"all": [str(paths[0])]}, "one file: rows 90 / 5 / 5 (train / validation / test)")
    groups = {}
    for p, r in zip(paths, rel):
        groups.setdefault(hash_split(r), []).append(str(p))
    return Source(spec, builder, groups, "by file: sha1(relative path) % 100, 0 test, 1 validation, else train")


def _load(source: Source, split: str, unit: str, streaming: bool):
    """The datasets object of a split (before the row fraction of one-file sources)."""
    if unit not in _UNITS:
        raise ValueError(f"data.unit must be one of {', '.join(_UNITS)}, got {unit!r}")
    try:
        if source.disk:
            ds = datasets.load_from_disk(source.disk)
            return _pick_split(ds, split, source.spec, streaming)
        if source.hub:
            spec = source.hub
            args = [spec["path"]] + ([spec["name"]] if "name" in spec else [])
            ds = datasets.load_dataset(*args, streaming=streaming)
            return _pick_split(ds, spec.get("splits", {}).get(split, split), source.spec, streaming)
        kw = {"sample_by": _UNITS[unit]} if source.builder == "text" else {}
        if "all" in source.files:
            data_files = source.files["all"]
        elif split == "all":
            data_files = [f for fs in source.files.values() for f in fs]
        else:
            if split not in source.files:
                raise ValueError(f"{source.spec}: no {split!r} split (its splits: {', '.join(sorted(source.files))}; "
                                 f"{source.how})")
            data_files = source.files[split]
        return datasets.load_dataset(source.builder, data_files=data_files, split="train", streaming=streaming, **kw)
    except ValueError as err:
        if str(err).startswith(source.spec):
            raise
        raise ValueError(f"{source.spec}: cannot be read as {source.builder} ({_one_line(err)})") from None
    except Exception as err:  # datasets wraps parser errors (DatasetGenerationError ...): one line
        raise ValueError(f"{source.spec}: cannot be read as {source.builder} ({_one_line(err)})") from None


def _pick_split(ds: Any, split: str, spec: str, streaming: bool):
    if isinstance(ds, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        if split == "all":
            parts = [ds[k] for k in ds]
            ds = datasets.concatenate_datasets(parts)
        elif split not in ds:
            raise ValueError(f"{spec}: no {split!r} split (its splits: {', '.join(ds)})")
        else:
            ds = ds[split]
    if streaming and isinstance(ds, datasets.Dataset):
        ds = ds.to_iterable_dataset()
    return ds


def _field_of(ds: Any, field: str, where: str) -> str:
    cols = list(getattr(ds, "column_names", None) or [])
    if cols and field not in cols:
        raise ValueError(f"{where}: no field {field!r} (its fields: {', '.join(cols)}); choose one with data.field")
    return field


def _texts(rows: Iterable[Any], field: str, where: str, detok) -> Iterable[str]:
    for i, row in enumerate(rows):
        if field not in row:
            raise ValueError(f"{where}: row {i} has no field {field!r} (its fields: {', '.join(row)})")
        v = row[field]
        if not isinstance(v, str):
            raise ValueError(f"{where}: field {field!r} of row {i} is {type(v).__name__}, not text")
        yield detok(v)


def _where(source: Source) -> str:
    fs = [f for v in source.files.values() for f in v]
    return fs[0] if len(fs) == 1 else source.spec


def read_documents(spec: str, split: Optional[str] = "train", *, field: str = "text", files: Optional[str] = None,
                   unit: str = "file") -> Tuple[List[str], Dict[str, Any]]:
    """(documents, description) of a split of a source (module docstring); ValueError in one line
    for every bad case, including an empty split."""
    split = _norm_split(split)
    source = resolve_source(spec, files)
    ds = _load(source, split, unit, streaming=False)
    where = _where(source)
    detok = _detokenizer(source)
    docs = list(_texts(ds, _field_of(ds, field, where), where, detok))
    one_file = "all" in source.files
    if one_file:
        if source.builder == "text" and unit == "file":
            a, b = fraction_split(len(docs[0]) if docs else 0, split)
            docs = [docs[0][a:b]] if docs else []
        else:
            a, b = fraction_split(len(docs), split)
            docs = docs[a:b]
    if not docs or not any(d.strip() for d in docs):
        raise ValueError(f"{where}: no text in the {split!r} split (field {field!r})" +
                         (f"; one file splits {int(FRACTIONS[0] * 100)} / 5 / 5" if one_file else ""))
    desc = dict(source.describe(), field=field, unit=unit if source.builder == "text" else "row", split=split)
    return docs, desc


def _detokenizer(source: Source):
    key = (source.hub or {}).get("key")
    return _DETOKENIZERS.get(key, _identity) if key in HF_DATASETS else _identity


def stream_documents(spec: str, split: str = "train", *, field: str = "text", files: Optional[str] = None,
                     unit: str = "line"):
    """(``datasets.IterableDataset`` of {field: text} rows of a split, read lazily, with
    ``state_dict()`` / ``load_state_dict()``; description). A one-file source cannot cut 90 / 5 / 5
    without its row count, which a stream does not have: there row i is in train when
    i mod 20 < 18, validation at 18, test at 19."""
    split = _norm_split(split)
    source = resolve_source(spec, files)
    ds = _load(source, split, unit, streaming=True)
    field = _field_of(ds, field, _where(source))
    ds = ds.select_columns([field])
    if "all" in source.files and split != "all":
        keep = {"train": range(0, 18), "validation": (18,), "test": (19,)}[split]
        ds = ds.filter(lambda _, i: i % 20 in keep, with_indices=True)
    return ds, dict(source.describe(), field=field, unit=unit, split=split, where=_where(source))
