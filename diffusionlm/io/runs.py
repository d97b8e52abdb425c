"""Building and loading runs: a RunConfig made into its tokenizer, DiffusionLM, training stream and
validation batches (`build`), and a run directory written by `diffusionlm train` or `compare`
read back (`load_run`). This is io, not configuration: it reads corpora, tokenizers, weights and
saved compositions.

    run = RunConfig.from_file("recipes/scratch.json", ["train.lr=1e-4"])
    parts = build(run)                      # tokenizer, lm, train stream, validation batches
    run, built = load_run("runs/scratch")   # in eval mode
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from ..config.legacy import backbone_of as legacy_backbone
from ..config.run import DataSpec, ModelSpec, RunConfig
from ..data import (
    BatchStream,
    InstructionCollator,
    TokenBlocks,
    check_vocab,
    format_instructions,
    known_names,
    load_corpus,
    load_tokenizer,
)
from ..data.sources import read_documents
from ..data.streaming import TokenStream
from ..lm import DiffusionLM, backbone_defaults
from ..masks import Layout
from ..models import DiffusionTransformer
from ..models.hf import mask_token_id
from ..processes import process
from ..specs import build as build_spec, provide
from ..training.checkpoint import latest_checkpoint, load_model_weights
from ..training.trainer import seed_everything
from ..trust import no_symlink
from .fetch import resolve_tokenizer
from .saving import SavedComposition, safetensors_errors

__all__ = ["BuiltRun", "DataSpec", "ModelSpec", "RunConfig", "build", "build_model", "composition_spec", "corpus_documents",
           "build_process", "build_tokenizer",
           "load_run", "safetensors_errors"]


@dataclass
class BuiltRun:
    tokenizer: Any
    lm: Any
    train_stream: Any
    val_batches: list


def build_tokenizer(spec: DataSpec):
    return load_tokenizer(resolve_tokenizer(spec.tokenizer))  # a fetchable name / .gguf -> its tokenizer


def build_process(spec: dict, tokenizer, mask_id: Optional[int] = None):
    """Deprecated helper (one release): the process of `spec` with the tokenizer's vocab_size and
    `mask_id` filled in. A run's process is built by DiffusionLM.from_dict (composition_spec)."""
    spec = _process_spec(spec, tokenizer)
    if mask_id is not None and spec.get("name") != "uniform":
        spec.setdefault("mask_id", mask_id)
    return process(spec)


def build_model(spec: ModelSpec, proc, tokenizer, length: int):
    """Deprecated helper (one release): the backbone of an old `model` section, built from its
    converted backbone spec by the registry (specs.build; a transformer's sizes from `proc`)."""
    backbone, init = legacy_backbone(spec)
    if init is not None:
        return DiffusionTransformer.from_pretrained(init)
    if backbone["name"] == "transformer":
        backbone = {**backbone_defaults(proc, getattr(tokenizer, "bos_id", None), length), **backbone}
    return build_spec("backbone", _mask_token(backbone, tokenizer))


def _process_spec(spec: Any, tokenizer: Any) -> Any:
    """A process spec with the tokenizer's vocab_size where it gives none."""
    return {"vocab_size": tokenizer.vocab_size, **spec} if isinstance(spec, dict) else spec


def _mask_token(backbone: Any, tokenizer: Any) -> Any:
    """An hf backbone whose `mask` names a token string, with that token's id (`mask_id`) instead."""
    mask = backbone.get("mask") if isinstance(backbone, dict) and backbone.get("name") == "hf" else None
    if mask in (None, "add", "none"):
        return backbone
    rest = {k: v for k, v in backbone.items() if k != "mask"}
    return {**rest, "mask_id": mask_token_id(mask, getattr(tokenizer, "hf", None))}


def composition_spec(run: RunConfig, tokenizer: Any) -> dict:
    """run.composition with what the data decides filled in where it is left out: the process's
    vocab_size (the tokenizer's), bos_id (its BOS, else EOS), a transformer backbone's
    max_positions (data.length, + 1 under the shifted_last layout, whose reader of the last
    position sits at position data.length; its other sizes come from the process in DiffusionLM.from_dict),
    an hf backbone's MASK token string as its id. `DiffusionLM.from_dict` of it is the run's
    composition (with fresh weights, or `run.init`'s)."""
    spec = copy.deepcopy(run.composition)
    spec["process"] = _process_spec(spec.get("process", {"name": "absorb"}), tokenizer)
    if spec.get("bos_id") is None:
        bos = getattr(tokenizer, "bos_id", None)
        spec["bos_id"] = bos if bos is not None else getattr(tokenizer, "eos_id", None)
    backbone = spec.get("backbone")
    if isinstance(backbone, str):  # a bare name, as every spec allows
        backbone = spec["backbone"] = {"name": backbone}
    if isinstance(backbone, dict) and backbone.get("name") == "transformer" and run.init is None:
        extra = Layout(spec.get("layout", Layout.ALIGNED)).extra_positions
        spec["backbone"] = {"max_positions": run.data.length + extra, **backbone}
    spec["backbone"] = _mask_token(spec.get("backbone"), tokenizer)
    return spec


def build(run: RunConfig, rank: int = 0, world_size: int = 1, data: bool = True) -> BuiltRun:
    """The tokenizer, the DiffusionLM and (with `data`) the training stream and validation
    batches of a run; `data=False` skips reading the corpus (sampling, evaluation, the demo).
    The composition is `DiffusionLM.from_dict(composition_spec(run, tokenizer))`; a backbone
    that decides the MASK id (hf) is built first so that the tokenizer is checked against it."""
    tok = build_tokenizer(run.data)
    spec = composition_spec(run, tok)
    model = None
    if run.init is not None:
        model = DiffusionTransformer.from_pretrained(run.init)
    elif spec.get("backbone") is not None and not _derived_backbone(spec["backbone"]):
        model = build_spec("backbone", spec.pop("backbone"))
        # the real ids the model takes (MASK, added or virtual, is the id after them)
        check_vocab(tok, model.mask_id if getattr(model, "mask_id", None) is not None else model.vocab_size)
    lm = DiffusionLM.from_dict(spec, model=model)
    check_vocab(tok, lm.process.vocab_size)
    lm.check_length(run.data.length, "data.length")
    if any(stage.get("two_halves", run.train.two_halves) for stage in run.stages or [{}]):
        lm.check_two_halves_length(run.data.length)  # before anything trains, not at the first step
    if not data:
        return BuiltRun(tok, lm, None, [])
    if run.data.instruct:
        stream, val = _instruction_data(run, tok, rank, world_size)
    else:
        stream, vs = _streams(run, tok, rank, world_size) if run.data.streaming else _blocks(run, tok, rank, world_size)
        val = []
        if run.data.val_batches:
            for _ in range(run.data.val_batches):
                try:
                    val.append(next(vs)["input_ids"])
                except StopIteration:
                    break
    return BuiltRun(tok, lm, stream, val)


def _derived_backbone(backbone: Any) -> bool:
    """Whether DiffusionLM.from_dict derives the backbone's sizes from the process (our transformer)."""
    return isinstance(backbone, dict) and backbone.get("name", "transformer") == "transformer"


def corpus_documents(data: DataSpec, split: str) -> list:
    """The documents of data.corpus's split: a name of the offline corpora (data.load_corpus), else
    any local file / folder / glob or hf: source through datasets (data.sources, with data.field,
    data.files and data.unit)."""
    if data.corpus in known_names():
        return load_corpus(data.corpus, split)
    return read_documents(data.corpus, split, field=data.field, files=data.files, unit=data.unit)[0]


def _blocks(run: RunConfig, tok: Any, rank: int, world_size: int) -> tuple:
    """The training BatchStream of this rank over the corpus read whole, and the validation one (or None)."""
    d = run.data
    train_blocks = TokenBlocks(corpus_documents(d, "train"), tok, d.length, rule=d.rule)
    train = BatchStream(train_blocks, run.train.batch_size, seed=run.train.seed, rank=rank, world_size=world_size)
    if not d.val_batches:
        return train, None
    vb = TokenBlocks(corpus_documents(d, d.val_split), tok, d.length, rule=d.rule)
    return train, BatchStream(vb, run.train.batch_size, seed=0, shuffle=False, epochs=1, drop_last=False)


def _streams(run: RunConfig, tok: Any, rank: int, world_size: int) -> tuple:
    """data.streaming: the training TokenStream of this rank, and the validation one (or None)."""
    d = run.data
    if d.rule != "wrap":
        raise ValueError("data.streaming packs documents into rows (the wrap rule): data.rule=pad needs streaming=false")
    kw = {"field": d.field, "files": d.files, "unit": d.unit}
    train = TokenStream(d.corpus, tok, d.length, run.train.batch_size, rank=rank, world_size=world_size, **kw)
    val = TokenStream(d.corpus, tok, d.length, run.train.batch_size, split=d.val_split, epochs=1, **kw) if d.val_batches else None
    return train, val


def load_run(path: "str | Path", data: bool = False, base: Any = None) -> "tuple[RunConfig, BuiltRun]":
    """A run directory written by `diffusionlm train` (or `diffusionlm compare`, one per variant),
    in eval mode: its model/ when training ended (a saved composition, or the bare transformer
    of older runs, rebuilt with run.json), else the newest checkpoint's weights on the model
    run.json builds. FileNotFoundError naming what is missing when there is neither. `base`: a
    LoRA adapter's base elsewhere (see diffusionlm.io.hub)."""
    run_dir = Path(path)
    cfg_file = no_symlink(run_dir / "run.json")
    if not cfg_file.is_file():
        what = "is a directory" if cfg_file.is_dir() else "is missing"
        raise FileNotFoundError(f"{cfg_file} {what}: give a directory written by `diffusionlm train`")
    try:
        run = RunConfig.from_dict(json.loads(cfg_file.read_text()), source=str(cfg_file))
    except json.JSONDecodeError as err:
        raise ValueError(f"{cfg_file} is not valid JSON: {err}") from None
    model_dir = no_symlink(run_dir / "model", f"{run_dir}: model/")
    composition = (model_dir / "config.json").is_file() and '"diffusionlm-composition"' in (model_dir / "config.json").read_text()
    if composition:
        p = SavedComposition.from_pretrained(model_dir, base=base).payload
        return run, BuiltRun(p.tokenizer, p.lm, None, [])
    if base is not None:
        raise ValueError(f"a LoRA base was given, but {run_dir} holds no saved composition with an adapter")
    final = _derived_backbone(run.composition.get("backbone")) and model_dir.exists()
    if final:
        run.init = str(run_dir / "model")  # the bare transformer an older run saved

    seed_everything(run.train.seed)  # a random-initialised base (hf_config) is the one training built
    built = build(run, data=data)
    if not final:
        # no final weights (an HF / LoRA run, or training still under way): the newest checkpoint;
        # never a silently untrained model

        ckpt = latest_checkpoint(run_dir)
        if ckpt is None:
            raise FileNotFoundError(
                f"{run_dir} holds no trained weights: neither model/ (written when training ends) nor a "
                f"checkpoint (LATEST): train it first, or give the run directory of a finished run"
            )

        load_model_weights(built.lm.model, ckpt)  # verified; adapters only: checked against their base
    built.lm.model.eval()
    return run, built


def _instruction_data(run: RunConfig, tok, rank: int, world_size: int):
    path = Path(run.data.instruct)
    if not path.exists():
        raise FileNotFoundError(f"instruction data not found: {path}")
    rows = [json.loads(l) for l in path.read_text().splitlines() if l.strip()]
    fm = format_instructions(tok, rows, max_length=run.data.length, on_long="skip",
                             prompt_field=run.data.prompt_field, response_field=run.data.response_field,
                             all_tokens=run.data.all_tokens)
    collate = InstructionCollator.lad(tok, length=run.data.length)
    return _InstructionStream(fm.examples, collate, run.train.batch_size, run.train.seed, rank, world_size), []


class _InstructionStream:
    """Resumable batches of formatted instruction examples (same contract as BatchStream)."""

    def __init__(self, examples, collate, batch_size, seed, rank=0, world_size=1):
        if len(examples) < batch_size * world_size:
            raise ValueError(f"{len(examples)} instruction examples are fewer than one global batch ({batch_size * world_size})")
        self.examples, self.collate, self.B = examples, collate, batch_size
        self.seed, self.rank, self.world = seed, rank, world_size
        self.epoch, self.pos = 0, 0
        self._torch = torch

    def _perm(self):
        g = self._torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return self._torch.randperm(len(self.examples), generator=g)

    def __iter__(self):
        return self

    def __next__(self):
        G = self.B * self.world
        if (self.pos + 1) * G > len(self.examples):
            self.epoch, self.pos = self.epoch + 1, 0
        idx = self._perm()[self.pos * G + self.rank * self.B : self.pos * G + (self.rank + 1) * self.B]
        self.pos += 1
        return self.collate([self.examples[int(i)] for i in idx])

    def state_dict(self):
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, s):
        self.epoch, self.pos = s["epoch"], s["pos"]


for _fn in (build, build_model, build_process, build_tokenizer, load_run, safetensors_errors):
    provide(f"runs.{_fn.__name__}", _fn)  # the deprecated diffusionlm.config names call these
