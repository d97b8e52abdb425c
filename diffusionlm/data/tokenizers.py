"""Tokenizers behind one small protocol: ``encode``, ``decode``, ``vocab_size``, ``eos_id``,
``bos_id``, ``pad_id`` (plus ``encode_batch``), so the trainer never cares which kind it got.

Rules
-----
* :class:`ByteTokenizer` (built in, no files): ids 0..255 are the UTF-8 bytes of the text, then
  EOS = 256, BOS = 257, PAD = 258, ``vocab_size`` = 259. With ``separate_pad=False`` padding
  reuses EOS and ``vocab_size`` = 258. ``encode`` never adds special ids (callers add EOS where
  their rule says so); a lone surrogate, which has no UTF-8 form, is encoded as ``?``. ``decode``
  drops special ids by default (``skip_special_tokens=False`` renders them as ``<|eos|>``,
  ``<|bos|>``, ``<|pad|>``) and decodes bytes with ``errors="replace"``.
* :class:`HFTokenizer` wraps any Hugging Face tokenizer (``.hf``): ``encode`` uses
  ``add_special_tokens=False``; ``vocab_size`` is ``len(hf)`` (base vocabulary plus added
  tokens, i.e. one more than the largest id); ``eos_id`` is the tokenizer's EOS, else its SEP
  (BERT); ``bos_id`` is its BOS, else CLS, else EOS; ``pad_id`` is its PAD, else EOS.
  A tokenizer with neither EOS nor SEP is refused (ValueError).
* :func:`load_tokenizer` ``spec`` rules, first match wins:
  an object already following the protocol is returned as is; a Hugging Face tokenizer object is
  wrapped; ``"byte"`` is :class:`ByteTokenizer`; ``"data:<rel>"`` is ``<rel>`` inside the data
  folder (``$DIFFUSIONLM_DATA``); an existing path, or a string that looks like a path (absolute,
  starting with ``.`` or ``~``, or ending in ``.json`` / ``.txt``), is local:
  a folder with ``byte_tokenizer.json`` -> :class:`ByteTokenizer`; a folder with
  ``tokenizer.json`` or ``tokenizer_config.json`` -> ``AutoTokenizer.from_pretrained(folder)``;
  a folder (or a ``vocab.json`` file) with ``vocab.json`` + ``merges.txt`` -> GPT-2 byte-level
  BPE; a folder (or file) with ``vocab.txt`` -> BERT WordPiece; a ``tokenizer.json`` file ->
  that serialization. A local path that is missing, or a folder without those files, raises
  FileNotFoundError naming the path. Anything else is a hub name passed unchanged to
  ``AutoTokenizer.from_pretrained`` (needs the network or the HF cache; not tested offline).
* :class:`CharTokenizer`: a fixed character vocabulary, ids ``0 .. C-1`` = the characters in the
  given (sorted) order, then ONE special id ``C`` serving as EOS, BOS and PAD (``vocab_size`` =
  C + 1). ``encode`` refuses a character outside the vocabulary (ValueError naming it and its
  position: nothing dropped or replaced). ``load_tokenizer("shakespeare_char")`` is nanoGPT's
  character vocabulary of tiny Shakespeare: ``sorted(set(text))`` of the whole
  ``tinyshakespeare/input.txt`` (65 characters, so ids 0..64 are nanoGPT's ``stoi``; 65 is the
  special). Saved as ``char_tokenizer.json`` (the characters as a JSON string).
* :func:`train_bpe`: byte-level BPE (the GPT-2 recipe: ByteLevel pre-tokenizer without a
  prefix space, the 256-byte initial alphabet, ByteLevel decoder) trained with the ``tokenizers``
  library. ``vocab_size`` counts the special tokens ``<|endoftext|>`` (id 0; EOS and BOS) and
  ``<|pad|>`` (id 1). It round-trips any text exactly. The result is a
  ``PreTrainedTokenizerFast``; wrap it with :func:`as_tokenizer` (or pass it anywhere a tokenizer
  is expected: the data functions wrap it themselves).

Note (transformers 5): ``GPT2TokenizerFast(vocab_file=..., merges_file=...)`` silently ignores
those keywords and builds an EMPTY tokenizer; the constructor takes ``vocab=`` and ``merges=``
(paths or objects). This module uses the latter and checks that the result is not empty.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Iterable, List, Optional, Protocol, Sequence, Union, runtime_checkable

import numpy as np
import transformers
from tokenizers import Tokenizer as _Tok, decoders, models, pre_tokenizers, trainers

from .paths import data_dir, data_path

__all__ = [
    "Tokenizer",
    "ByteTokenizer",
    "CharTokenizer",
    "HFTokenizer",
    "as_tokenizer",
    "load_tokenizer",
    "train_bpe",
    "encode_arrays",
]

BYTE_TOKENIZER_FILE = "byte_tokenizer.json"
CHAR_TOKENIZER_FILE = "char_tokenizer.json"
#: named character vocabularies: name -> the data file whose sorted set of characters it is
NAMED_CHAR_VOCABULARIES = {"shakespeare_char": ("tinyshakespeare", "input.txt")}


@runtime_checkable
class Tokenizer(Protocol):
    """What the data pipeline, the trainer and the samplers need from a tokenizer."""

    vocab_size: int
    eos_id: int
    bos_id: int
    pad_id: int

    def encode(self, text: str) -> List[int]: ...

    def decode(self, ids: Any) -> str: ...

    def encode_batch(self, texts: Sequence[str]) -> List[List[int]]: ...


def _as_id_list(ids: Any) -> List[int]:
    if hasattr(ids, "tolist"):
        ids = ids.tolist()
    if isinstance(ids, int):
        return [ids]
    return [int(i) for i in ids]


class _Ids:
    """What the built-in tokenizers share: len() is vocab_size, encode_batch, and save / load
    through one JSON file (FILE) holding the class name and `_config()`."""

    vocab_size: int
    FILE: str

    def __len__(self) -> int:
        return self.vocab_size

    def encode_batch(self, texts: Sequence[str]) -> List[List[int]]:
        return [self.encode(t) for t in texts]

    def save(self, directory: Union[str, Path]) -> Path:
        """Write FILE ({"class": ..., **_config()}) into `directory`; `load` reads it back."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / self.FILE
        path.write_text(json.dumps({"class": type(self).__name__, **self._config()}) + "\n")
        return path

    @classmethod
    def load(cls, directory: Union[str, Path]):
        path = Path(directory)
        if path.is_dir():
            path = path / cls.FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist (no saved {cls.__name__} there)")
        cfg = json.loads(path.read_text())
        if cfg.get("class") != cls.__name__:
            raise ValueError(f"{path} does not describe a {cls.__name__}: {cfg}")
        return cls._from_config(cfg, path)


class ByteTokenizer(_Ids):
    """UTF-8 bytes as ids 0..255, then EOS=256, BOS=257, PAD=258 (see the module docstring)."""

    NUM_BYTES = 256
    SPECIAL_NAMES = ("eos", "bos", "pad")

    def __init__(self, separate_pad: bool = True):
        self.separate_pad = bool(separate_pad)
        self.eos_id = 256
        self.bos_id = 257
        self.pad_id = 258 if self.separate_pad else self.eos_id
        self.vocab_size = 259 if self.separate_pad else 258

    def __repr__(self) -> str:
        return f"ByteTokenizer(vocab_size={self.vocab_size}, eos={self.eos_id}, bos={self.bos_id}, pad={self.pad_id})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ByteTokenizer) and other.separate_pad == self.separate_pad

    def encode(self, text: str) -> List[int]:
        return list(text.encode("utf-8", errors="replace"))

    def encode_array(self, text: str) -> np.ndarray:
        """``encode`` as an int64 array, without building a Python list (fast path for big corpora)."""
        return np.frombuffer(text.encode("utf-8", errors="replace"), dtype=np.uint8).astype(np.int64)

    def _special_name(self, i: int) -> str:
        if i == self.eos_id:
            return "<|eos|>"
        if i == self.bos_id:
            return "<|bos|>"
        return "<|pad|>"

    def decode(self, ids: Any, skip_special_tokens: bool = True) -> str:
        ids = _as_id_list(ids)
        out: List[str] = []
        buf = bytearray()
        for i in ids:
            if 0 <= i < self.NUM_BYTES:
                buf.append(i)
            elif self.NUM_BYTES <= i < self.vocab_size:
                if not skip_special_tokens:
                    out.append(buf.decode("utf-8", errors="replace"))
                    buf = bytearray()
                    out.append(self._special_name(i))
            else:
                raise ValueError(f"id {i} is outside the byte tokenizer's {self.vocab_size} ids")
        out.append(buf.decode("utf-8", errors="replace"))
        return "".join(out)

    FILE = BYTE_TOKENIZER_FILE

    def _config(self) -> dict:
        return {"separate_pad": self.separate_pad}

    @classmethod
    def _from_config(cls, cfg: dict, path: Path) -> "ByteTokenizer":
        return cls(separate_pad=cfg.get("separate_pad", True))


class CharTokenizer(_Ids):
    """Characters as ids 0..C-1 in the given order, then one special id C = EOS = BOS = PAD."""

    def __init__(self, chars: str, name: Optional[str] = None):
        if not isinstance(chars, str) or not chars:
            raise ValueError(f"CharTokenizer needs a non-empty string of characters, got {chars!r}")
        if len(set(chars)) != len(chars):
            dup = sorted({c for c in chars if chars.count(c) > 1})
            raise ValueError(f"CharTokenizer characters must be distinct; repeated: {dup!r}")
        self.chars, self.name = chars, name
        self.stoi = {c: i for i, c in enumerate(chars)}
        self.eos_id = self.bos_id = self.pad_id = len(chars)
        self.vocab_size = len(chars) + 1

    @classmethod
    def named(cls, name: str) -> "CharTokenizer":
        """A named vocabulary (:data:`NAMED_CHAR_VOCABULARIES`): sorted(set(text)) of its data file."""
        if name not in NAMED_CHAR_VOCABULARIES:
            raise ValueError(f"unknown character vocabulary {name!r}; known: {', '.join(NAMED_CHAR_VOCABULARIES)}")
        text = data_path(*NAMED_CHAR_VOCABULARIES[name]).read_text(encoding="utf-8")
        return cls("".join(sorted(set(text))), name=name)

    def __repr__(self) -> str:
        return f"CharTokenizer({self.name or 'chars'}, {len(self.chars)} characters, special={self.eos_id})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CharTokenizer) and other.chars == self.chars

    def encode(self, text: str) -> List[int]:
        try:
            return [self.stoi[c] for c in text]
        except KeyError as err:
            c = err.args[0]
            raise ValueError(f"character {c!r} (position {text.index(c)}) is not in the "
                             f"{len(self.chars)}-character vocabulary of {self!r}") from None

    def decode(self, ids: Any, skip_special_tokens: bool = True) -> str:
        out = []
        for i in _as_id_list(ids):
            if 0 <= i < len(self.chars):
                out.append(self.chars[i])
            elif i == self.eos_id:
                if not skip_special_tokens:
                    out.append("<|eos|>")
            else:
                raise ValueError(f"id {i} is outside the character tokenizer's {self.vocab_size} ids")
        return "".join(out)

    FILE = CHAR_TOKENIZER_FILE

    def _config(self) -> dict:
        return {"name": self.name, "chars": self.chars}

    @classmethod
    def _from_config(cls, cfg: dict, path: Path) -> "CharTokenizer":
        if not isinstance(cfg.get("chars"), str):
            raise ValueError(f"{path} does not describe a CharTokenizer: no string field 'chars'")
        return cls(cfg["chars"], name=cfg.get("name"))


class HFTokenizer:
    """A Hugging Face tokenizer (``.hf``) behind the :class:`Tokenizer` protocol."""

    def __init__(self, hf: Any, name: Optional[str] = None):
        self.hf = hf
        self.name = name or getattr(hf, "name_or_path", None) or type(hf).__name__
        if len(hf) == 0:
            raise ValueError(f"tokenizer {self.name!r} is empty (no vocabulary was loaded)")

        def tid(attr: str) -> Optional[int]:
            return getattr(hf, attr, None)

        eos = tid("eos_token_id")
        if eos is None:
            eos = tid("sep_token_id")
        if eos is None:
            raise ValueError(
                f"tokenizer {self.name!r} has neither an EOS nor a SEP token; set hf.eos_token first"
            )
        bos = tid("bos_token_id")
        if bos is None:
            bos = tid("cls_token_id")
        if bos is None:
            bos = eos
        pad = tid("pad_token_id")
        if pad is None:
            pad = eos
        self.eos_id = int(eos)
        self.bos_id = int(bos)
        self.pad_id = int(pad)
        self.vocab_size = int(len(hf))

    def __repr__(self) -> str:
        return (
            f"HFTokenizer({self.name!r}, vocab_size={self.vocab_size}, eos={self.eos_id}, "
            f"bos={self.bos_id}, pad={self.pad_id})"
        )

    def __len__(self) -> int:
        return self.vocab_size

    def encode(self, text: str) -> List[int]:
        return list(self.hf.encode(text, add_special_tokens=False))

    def encode_batch(self, texts: Sequence[str]) -> List[List[int]]:
        texts = list(texts)
        if not texts:
            return []
        enc = self.hf(texts, add_special_tokens=False, return_attention_mask=False, return_token_type_ids=False)
        return [list(x) for x in enc["input_ids"]]

    def decode(self, ids: Any, skip_special_tokens: bool = False) -> str:
        return self.hf.decode(
            _as_id_list(ids), skip_special_tokens=skip_special_tokens, clean_up_tokenization_spaces=False
        )

    @property
    def chat_template(self) -> Optional[str]:
        return getattr(self.hf, "chat_template", None)

    def apply_chat_template(self, messages: Any, **kwargs: Any) -> Any:
        return self.hf.apply_chat_template(messages, **kwargs)

    def save(self, directory: Union[str, Path]) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.hf.save_pretrained(str(directory))
        return directory


def _is_hf_tokenizer(obj: Any) -> bool:
    try:
        PreTrainedTokenizerBase = transformers.PreTrainedTokenizerBase  # transformers loads these on first use
    except ImportError:  # pragma: no cover
        return False
    return isinstance(obj, PreTrainedTokenizerBase)


def as_tokenizer(obj: Any) -> Tokenizer:
    """Return ``obj`` if it already follows the protocol; wrap a Hugging Face tokenizer."""
    if isinstance(obj, (ByteTokenizer, HFTokenizer)):
        return obj
    if _is_hf_tokenizer(obj):
        return HFTokenizer(obj)
    if isinstance(obj, Tokenizer):
        return obj
    raise TypeError(
        f"{type(obj).__name__} is not a tokenizer: need encode/decode/vocab_size/eos_id/bos_id/pad_id "
        "or a Hugging Face tokenizer (or use load_tokenizer(spec))"
    )


def encode_arrays(tokenizer: Any, texts: Sequence[str]) -> List[np.ndarray]:
    """Each text's ids as an int64 array (fast path for the byte tokenizer, batched for HF)."""
    tok = as_tokenizer(tokenizer)
    if isinstance(tok, ByteTokenizer):
        return [tok.encode_array(t) for t in texts]
    return [np.asarray(ids, dtype=np.int64) for ids in tok.encode_batch(list(texts))]


# ----------------------------------------------------------------------------------------------
# loading

def _gpt2_from_files(vocab: Path, merges: Path) -> HFTokenizer:
    for p in (vocab, merges):
        if not p.is_file():
            raise FileNotFoundError(f"{p} does not exist (a GPT-2 BPE needs vocab.json and merges.txt)")
    GPT2TokenizerFast = transformers.GPT2TokenizerFast  # transformers loads these on first use

    # transformers 5: `vocab=` / `merges=` (the old `vocab_file=` keyword is silently ignored).
    hf = GPT2TokenizerFast(vocab=str(vocab), merges=str(merges))
    return HFTokenizer(hf, name=str(vocab.parent))


def _bert_from_file(vocab: Path, **kwargs: Any) -> HFTokenizer:
    if not vocab.is_file():
        raise FileNotFoundError(f"{vocab} does not exist (a WordPiece tokenizer needs vocab.txt)")
    BertTokenizerFast = transformers.BertTokenizerFast  # transformers loads these on first use

    hf = BertTokenizerFast(vocab=str(vocab), **kwargs)
    return HFTokenizer(hf, name=str(vocab.parent))


def _looks_like_path(spec: str) -> bool:
    return (
        spec.startswith(("/", ".", "~"))
        or spec.endswith((".json", ".txt"))
        or "\\" in spec
    )


def _load_local(path: Path, **kwargs: Any) -> Tokenizer:
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist (tokenizer folder or file expected)")
    if path.is_dir():
        if (path / BYTE_TOKENIZER_FILE).is_file():
            return ByteTokenizer.load(path)
        if (path / CHAR_TOKENIZER_FILE).is_file():
            return CharTokenizer.load(path)
        if (path / "tokenizer.json").is_file() or (path / "tokenizer_config.json").is_file():
            AutoTokenizer = transformers.AutoTokenizer  # transformers loads these on first use

            try:
                hf = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False, **kwargs)
            except (ImportError, KeyboardInterrupt):
                raise
            except Exception as err:  # tokenizers' parser raises a bare Exception on a malformed file
                first = (str(err) or type(err).__name__).splitlines()[0]
                raise ValueError(f"{path}: cannot read its tokenizer (tokenizer.json / tokenizer_config.json): {first}") from None
            return HFTokenizer(hf, name=str(path))
        if (path / "vocab.json").is_file() or (path / "merges.txt").is_file():
            return _gpt2_from_files(path / "vocab.json", path / "merges.txt")
        if (path / "vocab.txt").is_file():
            return _bert_from_file(path / "vocab.txt", **kwargs)
        raise FileNotFoundError(
            f"{path} holds no tokenizer files (expected one of {BYTE_TOKENIZER_FILE}, tokenizer.json, "
            "tokenizer_config.json, vocab.json + merges.txt, vocab.txt)"
        )
    name = path.name
    if name == BYTE_TOKENIZER_FILE:
        return ByteTokenizer.load(path)
    if name == CHAR_TOKENIZER_FILE:
        return CharTokenizer.load(path)
    if name == "vocab.json":
        return _gpt2_from_files(path, path.parent / "merges.txt")
    if name == "merges.txt":
        return _gpt2_from_files(path.parent / "vocab.json", path)
    if name.endswith(".txt"):
        return _bert_from_file(path, **kwargs)
    if name.endswith(".json"):
        PreTrainedTokenizerFast = transformers.PreTrainedTokenizerFast  # transformers loads these on first use

        return HFTokenizer(PreTrainedTokenizerFast(tokenizer_file=str(path), **kwargs), name=str(path))
    raise ValueError(f"do not know how to load a tokenizer from the file {path}")


def load_tokenizer(spec: Any = "byte", **kwargs: Any) -> Tokenizer:
    """A tokenizer from ``spec`` following the rules in the module docstring.

    ``kwargs`` go to the Hugging Face constructor / ``from_pretrained`` where one is used.
    """
    if not isinstance(spec, (str, Path)):
        return as_tokenizer(spec)
    if isinstance(spec, Path):
        return _load_local(spec.expanduser(), **kwargs)
    if spec == "byte":
        return ByteTokenizer(**kwargs)
    if spec in NAMED_CHAR_VOCABULARIES:
        return CharTokenizer.named(spec)
    if spec.startswith("data:"):
        return _load_local(data_dir() / spec[len("data:"):], **kwargs)
    path = Path(spec).expanduser()
    if path.exists() or _looks_like_path(spec):
        return _load_local(path, **kwargs)
    AutoTokenizer = transformers.AutoTokenizer  # transformers loads these on first use

    return HFTokenizer(AutoTokenizer.from_pretrained(spec, trust_remote_code=False, **kwargs), name=spec)


# ----------------------------------------------------------------------------------------------
# training

def train_bpe(
    texts: Iterable[str],
    vocab_size: int,
    save_dir: Optional[Union[str, Path]] = None,
    special_tokens: Sequence[str] = ("<|endoftext|>", "<|pad|>"),
    min_frequency: int = 2,
):
    """Train a byte-level BPE of ``vocab_size`` ids (special tokens included) on ``texts``.

    Returns a ``transformers.PreTrainedTokenizerFast`` whose EOS and BOS are
    ``special_tokens[0]`` and whose PAD is ``special_tokens[1]`` (EOS when only one is given).
    When the corpus cannot supply enough merges the vocabulary comes out smaller, with a warning.
    ``save_dir``: also ``save_pretrained`` there (reload with ``load_tokenizer(save_dir)``).
    """
    PreTrainedTokenizerFast = transformers.PreTrainedTokenizerFast  # transformers loads these on first use

    special_tokens = list(special_tokens)
    if not special_tokens:
        raise ValueError("train_bpe needs at least one special token (the EOS)")
    minimum = 256 + len(special_tokens)
    if vocab_size < minimum:
        raise ValueError(
            f"vocab_size {vocab_size} is below {minimum} (256 byte symbols + {len(special_tokens)} special tokens)"
        )
    tk = _Tok(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    if isinstance(texts, str):
        texts = [texts]
    tk.train_from_iterator(texts, trainer)
    got = tk.get_vocab_size()
    if got != vocab_size:
        warnings.warn(f"train_bpe: asked for {vocab_size} ids, the corpus gave {got}", stacklevel=2)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        eos_token=special_tokens[0],
        bos_token=special_tokens[0],
        pad_token=special_tokens[1] if len(special_tokens) > 1 else special_tokens[0],
        clean_up_tokenization_spaces=False,
    )
    if save_dir is not None:
        Path(save_dir).mkdir(parents=True, exist_ok=True)
        hf.save_pretrained(str(save_dir))
    return hf
