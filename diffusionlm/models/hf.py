"""An adapter that turns any Hugging Face causal LM into a denoiser (DiffuGPT / DiffuLLaMA / LAD).

    hf = LlamaForCausalLM(config)                         # or GPT2LMHeadModel, AutoModelForCausalLM, ...
    model = HFDenoiser.from_model(hf, mask="add")         # one new MASK row; model.mask_id, model.vocab_size
    out = model(ids, position_ids=pos, attention_mask=mask, cache=cache, cache_commit=n)
    out.logits                                            # [B, L, model.vocab_size]
    out.cache                                             # a transformers.DynamicCache (or None)

The denoiser protocol (`diffusionlm.models.base`) on top of an HF causal LM:

Attention
    The hyperschedule's mask is handed to the HF model as an explicit 4-D mask [B or 1, 1, q, kv],
    together with explicit `position_ids`; transformers 5.x returns a 4-D mask unchanged from
    `create_causal_mask` (`masking_utils._preprocess_mask_arguments`: "If the mask is already 4D,
    simply return as-is"), for GPT-2 and Llama alike, so the model is exactly as bidirectional as
    the mask says. `attention_mask=None` means FULL bidirectional attention: an all-True mask is
    built, the HF causal default is never used. The mask is passed in the form the model's
    attention implementation (`model.config._attn_implementation`, read at every call) honours:

    * "sdpa": the boolean mask (True = may attend), given to `scaled_dot_product_attention`;
    * "eager": an additive float mask (`diffusionlm.masks.additive_mask`: 0 where allowed,
      `finfo(dtype).min` where blocked). Eager attention *adds* whatever it is given, so a boolean
      mask would be added as 0/1 and mask nothing.

    Other implementations (flash / flex / paged) cannot take an arbitrary dense mask and are
    refused. Rows that may attend nothing are refused too: HF attention cannot zero their output
    (SDPA gives NaN, eager uniform attention); the toolkit's masks never produce them.

Layout (DiffuGPT's "shift operation")
    The AR head is kept: the HF model's output at row j is trained to predict the token AFTER the
    one row j reads. In the toolkit's SHIFTED layout row j reads token j-1 (row 0 reads BOS) and
    its output predicts token j: exactly what the HF head already does. So this adapter maps rows
    to logits and nothing else; the shift of the *inputs* is done by the caller
    (`diffusionlm.masks.shift_inputs`, called by `DiffusionLM.forward`). The ALIGNED layout works
    too (row j reads token j) but fights the pretrained head.

MASK token
    `HFDenoiser.from_model(model, mask="add")` resizes the embeddings by one row (initialised to the
    mean of the existing rows, input and output embeddings alike) and uses the new id; `mask=<token
    string>` with `tokenizer=` takes an existing token that must encode to exactly one id;
    `mask_id=<int>` takes an id directly. `vocab_size` is the output size of the (resized) head.

Saving (`save_pretrained(dir, merge=False)` / `HFDenoiser.from_pretrained(dir)`)
    The folder holds the HF model's own files plus `denoiser.json` (MASK id, reserved id, whether
    the MASK row was added, the base a LoRA adapter belongs to):

    * a plain model: `model.save_pretrained(dir)`, loadable by `AutoModelForCausalLM` alone (the
      resized embeddings with their MASK row included);
    * a LoRA (peft) model: the ADAPTER only, in peft's format (`adapter_config.json` +
      `adapter_model.safetensors`), loadable by `peft.PeftModel.from_pretrained(base, dir)` on the
      base (resized by one row first when MASK was added: the MASK rows travel in the adapter as
      peft trainable tokens, see `models.lora.apply_lora`). The base is named by its directory or
      hub id and fingerprinted (architecture, sizes, sha256 of its input embeddings); loading on
      another base is refused naming both;
    * `merge=True`: LoRA merged into a copy of the weights, saved as a plain model.

KV cache
    The settled prefix is cached in a `transformers.DynamicCache`. The cache is a value passed in
    and returned, never state kept in the module: the adapter works on a shallow copy of the given
    cache (DynamicLayer.update concatenates into new tensors and crop slices, so the caller's cache
    and its tensors are never modified) and returns the new cache in `out.cache`. `empty_cache()`
    gives layers that keep their rows in preallocated buffers instead of concatenating the whole
    prefix at every call (`_StoredLayer`, the rules of `diffusionlm.models.cache`: only the newest
    cache on a buffer writes past its rows, so no cache handed out ever changes). With
    `cache_commit=n` the returned cache holds the previously cached rows plus the first n rows of
    this call: HF's forward appends ALL rows of the call, so the extra rows are cropped afterwards.
    Note: in transformers 5.x `DynamicCache.crop(k)` takes the number of rows to REMOVE as a
    negative int (`crop(-k)`); a positive "keep this many" argument (the 4.x meaning) raises.
    Why caching only settled rows is exact: see `diffusionlm.models.cache`.

`levels` are accepted and ignored (DiffuGPT's time-embedding-free architecture: the noise level is
implicit in the number of MASK tokens).

Speed (one decoding row per call, as in AR): `logits_to_keep=n` computes the head on the last n
rows only (HF's own argument; sliced afterwards for a model without it); a single query row
whose mask allows every key is handed to HF with no mask (what `generate()` passes: a row that
sees every key is the causal row, and SDPA takes its unmasked kernel); the cache goes in under
the argument name the model's forward declares (`cache` in transformers >= 5.x, else
`past_key_values`), so no deprecation warning is raised per call.
"""
from __future__ import annotations

import copy
import functools
import hashlib
import inspect
import json
import os
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn
import transformers
from torch import Tensor

from ..checks import check_levels
from ..specs import provided
from ..trust import check_hf_config, load_hf_causal_lm, read_json_config
from .base import Backbone, DenoiserOutput
from .annealing import ANNEALINGS, AttentionAnnealing, annealed_mask  # noqa: F401  (re-exported: their home was this module)
from .hf_cache import SUPPORTED_ATTENTION, MasksAndCache, _copy_cache
from .lora import apply_lora, is_peft, load_adapters, peft_model_of, save_adapters

__all__ = ["HFDenoiser", "mask_token_id", "AttentionAnnealing", "annealed_mask", "SUPPORTED_ATTENTION", "base_fingerprint"]

#: what `HFDenoiser.save_pretrained` writes beside the HF files, and its format version
DENOISER_FILE = "denoiser.json"
DENOISER_FORMAT_VERSION = 1


def _attn_impl(config: Any) -> str:
    impl = getattr(config, "_attn_implementation", None)
    if impl is None:
        impl = "eager"  # transformers' own fallback when nothing was chosen
    return str(impl)


def spec_max_rows(hf_config: Optional[dict] = None, path: Any = None) -> Optional[int]:
    """The rows an `hf` backbone spec's model will take (its positions), read from `hf_config` or
    a local folder's config.json without building the model; None when unknown (a hub id)."""
    AutoConfig = transformers.AutoConfig  # transformers loads these on first use
    if hf_config is None and path is not None and Path(path, "config.json").is_file():
        hf_config = read_json_config(Path(path, "config.json"))
    if not isinstance(hf_config, dict) or not isinstance(hf_config.get("model_type"), str):
        return None
    hc = {k: v for k, v in hf_config.items() if k not in ("transformers_version", "auto_map")}
    return _max_positions(AutoConfig.for_model(hc.pop("model_type"), **hc))


def _max_positions(config: Any) -> Optional[int]:
    for name in ("max_position_embeddings", "n_positions", "max_positions"):
        v = getattr(config, name, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


@functools.lru_cache(maxsize=None)
def _forward_params(cls: type) -> frozenset:
    """The keyword names the forward of this model class declares (none known: empty)."""
    try:
        return frozenset(inspect.signature(cls.forward).parameters)
    except (TypeError, ValueError):  # pragma: no cover - a forward without a signature
        return frozenset()


def add_mask_row(model: nn.Module) -> int:
    emb = model.get_input_embeddings()
    n = int(emb.weight.shape[0])
    head = model.get_output_embeddings()
    head_rows = None if head is None else int(head.weight.shape[0])
    if head_rows is not None and head_rows != n:
        raise ValueError(f"the input embeddings have {n} rows but the head {head_rows}: cannot add one MASK row to both")
    with torch.no_grad():
        in_mean = emb.weight.mean(0).clone()
        out_mean = None if head is None else head.weight.mean(0).clone()
        out_bias_mean = None if head is None or getattr(head, "bias", None) is None else head.bias.mean().clone()
    model.resize_token_embeddings(n + 1, mean_resizing=False)
    emb = model.get_input_embeddings()
    head = model.get_output_embeddings()
    with torch.no_grad():
        emb.weight[n] = in_mean
        if head is not None and head.weight is not emb.weight:
            head.weight[n] = out_mean
            if out_bias_mean is not None and getattr(head, "bias", None) is not None:
                head.bias[n] = out_bias_mean
    return n


def mask_token_id(mask: str, tokenizer: Any) -> int:
    """The id of the existing token string `mask` (MASK = a token of the vocabulary): it must
    encode to exactly one id with `tokenizer` (a transformers tokenizer or a `tokenizers` one)."""
    if tokenizer is None:
        raise ValueError(f"mask={mask!r} names a token: pass tokenizer= to look up its id (or use mask_id=)")
    enc = tokenizer.encode(mask, add_special_tokens=False)
    ids = list(getattr(enc, "ids", enc))  # a transformers tokenizer gives a list, `tokenizers` an Encoding
    if len(ids) != 1:
        raise ValueError(f"the MASK token {mask!r} must encode to exactly one id, but the tokenizer gives {len(ids)}: {ids}")
    return int(ids[0])


class _HFSpec:
    """The "hf" backbone spec of an HFDenoiser (diffusionlm.specs): built from an HF config (fresh
    weights) or a path, written back as its config without the weights."""

    @classmethod
    def from_spec(
        cls,
        hf_config: Optional[dict] = None,
        path: Optional[str] = None,
        attn_implementation: str = "sdpa",
        mask: Optional[str] = None,
        mask_id: Optional[int] = None,
        lora: Optional[dict] = None,
    ) -> "HFDenoiser":
        """A causal LM from {"name": "hf", ...}: `hf_config` (a config dict with "model_type":
        fresh weights) or `path` (a local directory or hub id: its weights); MASK by `mask`
        ("add": one more row, the default as in `config.ModelSpec`; a token string; "none": no
        MASK) or `mask_id` (an existing id, see `from_model`); `lora` the keyword arguments of
        `models.lora.apply_lora`. Every field is described in docs/TRAINING.md ("The hf backbone")."""
        AutoConfig, AutoModelForCausalLM = transformers.AutoConfig, transformers.AutoModelForCausalLM  # transformers loads these on first use

        if (hf_config is None) == (path is None):
            raise ValueError("backbone hf: give exactly one of the keys hf_config (fresh weights) and path")
        if hf_config is not None:
            hc = {k: v for k, v in dict(hf_config).items() if k != "transformers_version"}
            if "model_type" not in hc:
                raise ValueError("backbone hf: hf_config needs model_type (e.g. \"gpt2\", \"llama\")")
            check_hf_config(hc, "backbone hf: hf_config")
            model = AutoModelForCausalLM.from_config(
                AutoConfig.for_model(hc.pop("model_type"), **hc), attn_implementation=attn_implementation,
                trust_remote_code=False)
        else:  # a fetched name ("smollm2"), a .gguf, an HF folder or a hub id: the io layer resolves it
            model = provided("load_causal_lm")(path, attn_implementation=attn_implementation)
        if mask is None and mask_id is None:
            mask = "add"  # the loader's default (config.ModelSpec.mask): one spec, one model
        denoiser = cls.from_model(model, None if mask == "none" else mask, mask_id=mask_id)
        if lora is not None:
            apply_lora(denoiser, **lora)
        return denoiser

    def to_dict(self) -> dict:
        """{"name": "hf", "hf_config": the wrapped model's config (non-default keys), "mask_id": the
        model's own MASK id, "lora": the adapters' settings or None, ...}: builds the same
        architecture with fresh weights (weights are saved separately)."""
        base, lora = self.model, None
        peft_config = getattr(base, "peft_config", None)
        if peft_config:
            c = peft_config["default"]
            lora = {"r": c.r, "alpha": c.lora_alpha, "target_modules": sorted(c.target_modules),
                    "dropout": c.lora_dropout,
                    "modules_to_save": None if c.modules_to_save is None else sorted(c.modules_to_save)}
        hc = {k: v for k, v in self.config.to_diff_dict().items() if k != "transformers_version"}
        own_mask = self.reserved_id if self.reserved_id is not None else self.mask_id
        return {"name": self.name, "hf_config": hc, "path": None, "attn_implementation": self.attn_implementation,
                "mask": "none" if own_mask is None else None, "mask_id": own_mask, "lora": lora}


class HFDenoiser(_HFSpec, MasksAndCache, nn.Module, Backbone):
    """A Hugging Face causal LM behind the denoiser protocol (see the module docstring).

    model    an `AutoModelForCausalLM` instance (GPT-2, Llama, ...; also a peft-wrapped one)
    mask_id  the MASK id (None: no MASK, e.g. for the Uniform process); must be < vocab_size.
             Use :meth:`from_model` to add a MASK row or take it from a tokenizer.

    Processes need MASK after the N real ids. A MASK taken from a reserved token in the middle of
    the vocabulary (Llama 3's <|reserved_special_token_0|> is 128002 of 128256) is therefore
    exposed as a virtual id, the head's output size V: input id V is fed to the model as the
    reserved id, the logits get one more column (the reserved id's logit) and the reserved id's
    own column is pushed to the dtype's minimum, so the process sees N = V real tokens (the
    reserved one never predicted) and MASK = V. `reserved_id` holds the model's own id.
    """

    name = "hf"
    spec_name = name  # the older attribute
    #: what models.lora knows an HFDenoiser by (it wraps the HF causal LM as `.model`)
    wraps_hf_causal_lm = True
    #: the wrapped LM has no time embedding: `levels` are accepted and ignored
    ignores_levels = True

    def __init__(self, model: nn.Module, mask_id: Optional[int] = None):
        super().__init__()
        if not hasattr(model, "get_input_embeddings") or getattr(model, "config", None) is None:
            raise TypeError(
                f"HFDenoiser wraps a Hugging Face causal LM (a PreTrainedModel with a config), got {type(model).__name__}"
            )
        self.model = model
        if mask_id is not None:
            if not isinstance(mask_id, int) or isinstance(mask_id, bool) or not 0 <= mask_id < self.vocab_size:
                raise ValueError(
                    f"mask_id {mask_id!r} does not fit the model's vocabulary: allowed [0, {self.vocab_size - 1}] "
                    "(use HFDenoiser.from_model(model, mask='add') to add a MASK row)"
                )
        self.reserved_id: Optional[int] = None
        if mask_id is not None and mask_id != self.vocab_size - 1:
            self.reserved_id, mask_id = mask_id, self.vocab_size  # virtual MASK after the real ids
        self.mask_id = mask_id
        #: the MASK row was added to the embeddings (mask="add"): an adapter must carry it
        self.mask_added = False

    # -- construction ------------------------------------------------------------------
    @classmethod
    def from_model(
        cls,
        model: nn.Module,
        mask: Optional[str] = None,
        *,
        mask_id: Optional[int] = None,
        tokenizer: Any = None,
    ) -> "HFDenoiser":
        """Wrap `model`, choosing the MASK token:

        mask="add"        resize the embeddings (and an untied head) by one row initialised to the
                          mean of the existing rows; MASK = the new id (= old vocab size)
        mask="<token>"    an existing token string, encoded with `tokenizer` (required); it must
                          encode to exactly one id, and that id must fit the model
        mask_id=<int>     an existing id
        neither           no MASK token

        "add" resizes `model` itself (in place), so wrap a given model instance once.
        """
        if mask is not None and mask_id is not None:
            raise ValueError("give either mask (\"add\" or a token string) or mask_id, not both")
        if mask is None:
            return cls(model, mask_id)
        if not isinstance(mask, str):
            raise TypeError(f"mask must be 'add' or a token string, got {type(mask).__name__}")
        if mask == "add":
            out = cls(model, add_mask_row(model))
            out.mask_added = True
            return out
        return cls(model, mask_token_id(mask, tokenizer))

    # -- queries -------------------------------------------------------------------------
    @property
    def config(self) -> Any:
        """The wrapped model's config (max_position_embeddings, _attn_implementation, ...)."""
        return self.model.config

    @property
    def vocab_size(self) -> int:
        """Output size: rows of the (resized) head, plus the virtual MASK column if any."""
        return self._head_size() + (self.reserved_id is not None if hasattr(self, "reserved_id") else 0)

    def _head_size(self) -> int:
        head = self.model.get_output_embeddings()
        if head is None:
            return int(self.model.get_input_embeddings().weight.shape[0])
        out = getattr(head, "out_features", None)
        return int(out) if isinstance(out, int) else int(head.weight.shape[0])

    @property
    def input_vocab_size(self) -> int:
        """Ids the embedding accepts (plus the virtual MASK id if any)."""
        n = int(self.model.get_input_embeddings().weight.shape[0])
        if getattr(self, "reserved_id", None) is not None:
            n = max(n, self.mask_id + 1)
        return n

    @property
    def max_positions(self) -> Optional[int]:
        return _max_positions(self.model.config)

    @property
    def max_rows(self) -> Optional[int]:
        """Rows one forward takes (cache included): the model's positions. The two-halves layout
        feeds 2 x length rows, so it needs max_rows >= 2 x length (`DiffusionLM.check_two_halves_length`)."""
        return self.max_positions

    @property
    def attn_implementation(self) -> str:
        return _attn_impl(self.model.config)

    # -- saving ------------------------------------------------------------------------
    def save_pretrained(self, directory: "str | os.PathLike", merge: bool = False) -> dict:
        """Write the model into `directory` (see the module docstring); returns denoiser.json's dict.

        A LoRA model saves its adapter only, unless `merge`; a LoRA model whose base was built
        from a config (no directory or hub id to reload it from) can only be saved merged."""
        os.makedirs(directory, exist_ok=True)
        meta: dict = {
            "format": "diffusionlm-hf-denoiser", "format_version": DENOISER_FORMAT_VERSION,
            "mask_id": self.mask_id, "reserved_id": self.reserved_id, "mask_added": self.mask_added,
            "attn_implementation": self.attn_implementation,
        }
        if is_peft(self.model) and not merge:
            peft_model = peft_model_of(self)
            base = peft_model.peft_config[peft_model.active_adapter].base_model_name_or_path
            if not base:
                raise ValueError(
                    "this LoRA model's base was built from a config, not loaded from a directory or hub id, so an "
                    "adapter alone could never be applied to it again: save it merged (merge=True, --merge)"
                )
            save_adapters(self, directory, with_embeddings=self.mask_added and not _mask_rows_in_adapter(peft_model))
            meta.update(weights="adapter", base=base,
                        base_fingerprint=base_fingerprint(peft_model.get_base_model(), self._base_rows()))
        else:
            model = self.model
            if is_peft(model):
                model = copy.deepcopy(peft_model_of(self)).merge_and_unload()
            model.save_pretrained(str(directory))
            meta.update(weights="full", base=None, base_fingerprint=None)
        Path(directory, DENOISER_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        return meta

    def _base_rows(self) -> int:
        """Rows of the input embeddings before the MASK row was added."""
        return int(self.model.get_input_embeddings().weight.shape[0]) - int(self.mask_added)

    @classmethod
    def from_pretrained(
        cls, directory: "str | os.PathLike", *, base: Any = None, attn_implementation: Optional[str] = None,
        resolve: Any = None,
    ) -> "HFDenoiser":
        """Load a folder written by :meth:`save_pretrained`. An adapter is applied to its base: `base`
        (a model object, a directory or a hub id) or else the one it names; `resolve` maps a base
        name to a local directory (default: unchanged). ValueError naming both when the base given
        is not the one the adapter was trained on."""
        directory = Path(directory)
        meta_file = directory / DENOISER_FILE
        if not meta_file.is_file():
            raise FileNotFoundError(f"{meta_file} is missing: {directory} was not written by HFDenoiser.save_pretrained")
        meta = read_json_config(meta_file)
        version = meta.get("format_version", 1)
        if not isinstance(version, int) or version > DENOISER_FORMAT_VERSION:
            raise ValueError(
                f"{meta_file} has format version {version!r}, newer than this diffusionlm reads "
                f"(up to {DENOISER_FORMAT_VERSION}): upgrade diffusionlm"
            )
        impl = attn_implementation or meta.get("attn_implementation") or "sdpa"
        if meta.get("weights") == "adapter":
            name = meta.get("base")
            if base is None:
                base = name
            given = base if isinstance(base, (str, os.PathLike)) else getattr(getattr(base, "config", None), "_name_or_path", type(base).__name__)
            if isinstance(base, (str, os.PathLike)):
                path = resolve(str(base)) if resolve is not None else str(base)
                base = load_hf_causal_lm(str(path), attn_implementation=impl)
            expected = meta.get("base_fingerprint")
            if expected:
                found = base_fingerprint(base, expected.get("rows"))
                if found != expected:
                    diff = sorted(k for k in set(expected) | set(found) if expected.get(k) != found.get(k))
                    raise ValueError(
                        f"the adapter in {directory} was trained on base {name!r} but the base given, {str(given)!r}, "
                        f"differs in {', '.join(diff)} ({_short(expected, diff)} vs {_short(found, diff)})"
                    )
            if meta.get("mask_added"):
                add_mask_row(base)  # its values come from the adapter (peft trainable tokens)
            model = load_adapters(base, directory)
        else:
            model = load_hf_causal_lm(str(directory), attn_implementation=impl)
        reserved = meta.get("reserved_id")
        out = cls(model, reserved if reserved is not None else meta.get("mask_id"))
        out.mask_added = bool(meta.get("mask_added"))
        if out.mask_id != meta.get("mask_id"):
            raise ValueError(f"{meta_file} says MASK is {meta.get('mask_id')} but the weights give {out.mask_id}")
        return out

    # -- forward -------------------------------------------------------------------------
    def forward(
        self,
        input_ids: Tensor,
        *,
        position_ids: Optional[Tensor] = None,
        attention_mask: Any = None,
        levels: Optional[Tensor] = None,
        cache: Any = None,
        cache_commit: int = 0,
        logits_to_keep: int = 0,
        first_logits: int = 0,
    ) -> DenoiserOutput:
        """Logits for the L rows of `input_ids` [B, L] (the last `logits_to_keep` rows only, if > 0;
        the first `first_logits` rows only, if > 0: the two-halves training layout needs the noisy
        half's, and the 49k-wide head over the clean half would cost a fifth of the forward).

        position_ids    [B or 1, L] true positions (default: cached rows + arange(L))
        attention_mask  None (FULL attention), "causal", bool [B or 1, 1, L, P + L] (True = may
                        attend; the P cached rows come first in the key order) or a BlockMask
        levels          ignored (time-embedding-free), but must be noise levels in [0, 1] when given
        cache           a transformers.DynamicCache of P rows, or None (P = 0); not modified
        cache_commit    how many of this call's rows (the first ones) the returned cache keeps

        Returns DenoiserOutput(logits [B, L, vocab_size], cache): a new DynamicCache with the P
        cached rows plus the first `cache_commit` rows of this call (None if no cache was given
        and cache_commit = 0).
        """
        position_ids, past = self._check(input_ids, position_ids, cache, cache_commit)
        if levels is not None:
            check_levels(levels, what="levels")
        B, L = input_ids.shape
        if not isinstance(logits_to_keep, int) or isinstance(logits_to_keep, bool) or not 0 <= logits_to_keep <= L:
            raise ValueError(f"logits_to_keep must be an int in [0, {L}] (0: every row), got {logits_to_keep!r}")
        dtype = self.model.get_input_embeddings().weight.dtype
        one_row = L == 1 and past and self.attn_implementation == "sdpa"
        if one_row and attention_mask is None:
            mask = None  # one row seeing every key: HF's causal row (module docstring, "Speed")
        else:
            mask = self._prepare_mask(attention_mask, B, L, past + L, input_ids.device, dtype)
            if one_row and bool(mask.all()):
                mask = None
        want_cache = cache is not None or cache_commit > 0
        work = None
        if want_cache:
            work = _copy_cache(cache) if cache is not None else self.empty_cache()
        if self.reserved_id is not None:
            input_ids = torch.where(input_ids == self.mask_id, torch.full_like(input_ids, self.reserved_id), input_ids)
        params = _forward_params(type(self.model))
        extra: dict = {}
        if logits_to_keep and first_logits:
            raise ValueError("give logits_to_keep (the last rows) or first_logits (the first rows), not both")
        if not isinstance(first_logits, int) or isinstance(first_logits, bool) or not 0 <= first_logits <= L:
            raise ValueError(f"first_logits must be an int in [0, {L}] (0: every row), got {first_logits!r}")
        if logits_to_keep and "logits_to_keep" in params:
            extra["logits_to_keep"] = logits_to_keep
        elif first_logits and "logits_to_keep" in params:
            extra["logits_to_keep"] = torch.arange(first_logits, device=input_ids.device)
        out = self.model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=position_ids,
            use_cache=want_cache,
            **{"cache" if "cache" in params else "past_key_values": work},
            **extra,
        )
        new_cache = self._commit(work, L, past, cache_commit) if want_cache else None
        logits = out.logits
        if logits_to_keep and logits.shape[1] != logits_to_keep:
            logits = logits[:, -logits_to_keep:]
        if first_logits and logits.shape[1] != first_logits:
            logits = logits[:, :first_logits]
        if self.reserved_id is not None:
            r = self.reserved_id
            logits = torch.cat([logits, logits[..., r : r + 1]], dim=-1)
            logits[..., r] = torch.finfo(logits.dtype).min
        return DenoiserOutput(logits, new_cache)

    def extra_repr(self) -> str:
        return f"mask_id={self.mask_id}, vocab_size={self.vocab_size}, attn={self.attn_implementation}"


def base_fingerprint(model: Any, rows: Optional[int] = None) -> dict:
    """What identifies the base a LoRA adapter was trained on: architecture, sizes, and the sha256
    of the first `rows` rows of its input embeddings (float32 bytes; default all rows)."""
    cfg = model.config
    w = model.get_input_embeddings().weight
    rows = int(w.shape[0]) if rows is None else int(rows)
    digest = hashlib.sha256(w[:rows].detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()
    return {
        "model_type": getattr(cfg, "model_type", None), "rows": rows, "hidden_size": int(w.shape[1]),
        "num_hidden_layers": getattr(cfg, "num_hidden_layers", None), "embedding_sha256": digest,
    }


def _short(fp: dict, keys: list) -> str:
    return ", ".join(f"{k}={str(fp.get(k))[:12]}" for k in keys)


def _mask_rows_in_adapter(peft_model: Any) -> bool:
    cfg = peft_model.peft_config[peft_model.active_adapter]
    return getattr(cfg, "trainable_token_indices", None) is not None
