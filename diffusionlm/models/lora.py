"""LoRA adapters through peft, for the LAD recipe (LoRA-Adapted Diffusion).

    model = HFDenoiser.from_model(LlamaForCausalLM(cfg), mask="add")
    model = apply_lora(model, r=8)                      # q_proj / v_proj, alpha = r, dropout 0
    print(lora_audit(model))                            # trainable vs frozen
    ... train ...
    save_adapters(model, "run/adapters")                # the adapters alone
    fresh = HFDenoiser.from_model(LlamaForCausalLM(cfg_same_weights), mask="add")
    model2 = load_adapters(fresh, "run/adapters")       # same logits as `model`

LAD (paper, section 2.1 and appendix A): bidirectional attention (here: the hyperschedule's mask,
given to the HF model by `HFDenoiser`), LoRA on the query and value projections only, lora_alpha
= r, no dropout, everything else frozen. (The paper also keeps the output layer trainable; pass
`modules_to_save=("lm_head",)` for that: peft then trains and saves a copy of the head.)

Where LoRA goes: these functions accept either the raw HF causal LM or an `HFDenoiser` wrapping
one. On an HFDenoiser the LoRA layers are injected into the wrapped HF model, which is replaced
(in place) by the peft model: `denoiser.model` becomes a `peft.PeftModel`, and the same
HFDenoiser object is returned (its forward, MASK id and cache handling are unchanged; the peft
model forwards every keyword to the HF model). On a raw HF model, the `peft.PeftModel` is
returned, to be wrapped with `HFDenoiser(peft_model, mask_id)` afterwards. Either way, resize the
embeddings (add MASK) BEFORE applying LoRA.

The MASK row: on an HFDenoiser whose MASK row was added (`mask="add"`), apply_lora registers that
row of the input embeddings (and of an untied head) as peft *trainable tokens*
(`LoraConfig.trainable_token_indices`), frozen unless `train_mask_row=True`. peft then saves the
row's values with the adapter (a few KB, not the embedding matrix), so the adapter is
self-contained: `PeftModel.from_pretrained(base, dir)` on the base resized by one row (with any
initialisation) restores the exact MASK embedding. Without that (LoRA applied before the row was
added) `save_adapters(..., with_embeddings=True)` saves the whole resized embeddings instead.

GPT-2-style models fuse q, k and v into one `c_attn` (a transformers `Conv1D`): pass
`target_modules=("c_attn",)`; the fan-in/fan-out convention of Conv1D is set automatically.
"""
from __future__ import annotations

import json
import os
from typing import Any, Optional, Sequence

import torch.nn as nn
from transformers.pytorch_utils import Conv1D

from ..trust import UntrustedFolderError, no_symlink, read_json_config


__all__ = ["apply_lora", "lora_audit", "save_adapters", "load_adapters", "linear_module_names", "peft_model_of", "is_peft"]


def _is_denoiser(model: Any) -> bool:
    """An HFDenoiser (it wraps the HF model as `.model`; this module sits below the adapter, which
    saves and loads its adapters with it, so it knows the adapter by that mark, not by import)."""
    return bool(getattr(type(model), "wraps_hf_causal_lm", False))


def _conv1d_type():
    return (Conv1D,)


def linear_module_names(model: nn.Module) -> list[str]:
    """Sorted distinct leaf names of the Linear-like modules (nn.Linear, transformers Conv1D) of
    `model`: the names `target_modules` may use."""
    kinds = (nn.Linear,) + _conv1d_type()
    return sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if name and isinstance(m, kinds)})


def is_peft(model: Any) -> bool:
    """Whether `model` (an HF model, a PeftModel or an HFDenoiser) carries peft adapters."""
    try:
        from peft import PeftModel  # optional: peft, pip install 'diffusionlm[lora]'
    except ImportError:  # pragma: no cover
        return False
    inner = model.model if _is_denoiser(model) else model
    return isinstance(inner, PeftModel)


def peft_model_of(model: Any):
    """The peft.PeftModel inside `model` (an HFDenoiser after apply_lora, or a PeftModel itself)."""
    from peft import PeftModel  # optional: peft, pip install 'diffusionlm[lora]'

    inner = model.model if _is_denoiser(model) else model
    if not isinstance(inner, PeftModel):
        raise ValueError(f"{type(model).__name__} carries no LoRA adapters (apply_lora or load_adapters first)")
    return inner


def _check_targets(base: nn.Module, targets: Sequence[str]) -> bool:
    """Raise ValueError unless every target names a Linear-like module of `base`. Returns whether
    the targets are transformers Conv1D modules (GPT-2), which need fan_in_fan_out=True."""
    kinds = (nn.Linear,) + _conv1d_type()
    found: dict[str, list[nn.Module]] = {t: [] for t in targets}
    for name, m in base.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        for t in targets:
            if name == t or leaf == t or name.endswith("." + t):
                found[t].append(m)
    missing = [t for t, ms in found.items() if not any(isinstance(m, kinds) for m in ms)]
    if missing:
        hint = " (GPT-2-style models fuse q/k/v in 'c_attn': target_modules=('c_attn',))" if "c_attn" in linear_module_names(base) else ""
        raise ValueError(
            f"LoRA target module(s) {missing} not found among the model's Linear modules; "
            f"available: {linear_module_names(base)}{hint}"
        )
    conv = _conv1d_type()
    is_conv = [isinstance(m, conv) for ms in found.values() for m in ms if isinstance(m, kinds)] if conv else [False]
    if any(is_conv) and not all(is_conv):
        raise ValueError("mixing transformers Conv1D and nn.Linear targets in one LoRA config is not supported")
    return bool(is_conv) and all(is_conv)


def apply_lora(
    model: Any,
    r: int = 8,
    alpha: Optional[float] = None,
    target_modules: Sequence[str] = ("q_proj", "v_proj"),
    dropout: float = 0.0,
    modules_to_save: Optional[Sequence[str]] = None,
    train_mask_row: bool = False,
):
    """Inject LoRA adapters (peft `LoraConfig` + `get_peft_model`) and freeze everything else.

    model           a raw HF causal LM (returns the peft.PeftModel) or an HFDenoiser (its wrapped
                    model is replaced by the peft model; returns the same HFDenoiser)
    r               LoRA rank;  alpha: lora_alpha, default r (scale alpha / r = 1, as in LAD)
    target_modules  leaf names of the Linear modules to adapt (LAD: query and value projections;
                    GPT-2: ('c_attn',)); a name that matches no Linear module is a ValueError
                    listing the model's Linear module names
    dropout         LoRA dropout (LAD: 0)
    modules_to_save extra modules trained in full and saved with the adapters (e.g. ('lm_head',))
    train_mask_row  on an HFDenoiser with an added MASK row: train that row too (default: frozen;
                    it is saved with the adapter either way, see the module docstring)
    """
    from peft import LoraConfig, PeftModel, get_peft_model  # optional: peft, pip install 'diffusionlm[lora]'

    denoiser = model if _is_denoiser(model) else None
    base = denoiser.model if denoiser is not None else model
    if isinstance(base, PeftModel):
        raise ValueError("this model already carries peft adapters")
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise ValueError(f"the LoRA rank r must be a positive int, got {r!r}")
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"dropout must lie in [0, 1), got {dropout!r}")
    if isinstance(target_modules, str):
        target_modules = (target_modules,)
    target_modules = tuple(target_modules)
    if not target_modules:
        raise ValueError("target_modules is empty")
    fan_in_fan_out = _check_targets(base, target_modules)
    tokens = _mask_token_targets(base, denoiser.mask_id, modules_to_save) if denoiser is not None and denoiser.mask_added else None
    config = LoraConfig(
        r=r,
        lora_alpha=r if alpha is None else alpha,
        target_modules=list(target_modules),
        lora_dropout=float(dropout),
        bias="none",
        fan_in_fan_out=fan_in_fan_out,
        modules_to_save=list(modules_to_save) if modules_to_save else None,
        trainable_token_indices=tokens,
    )
    peft_model = get_peft_model(base, config)
    if tokens is not None and not train_mask_row:
        for name, p in peft_model.named_parameters():
            if "trainable_tokens_delta" in name:
                p.requires_grad_(False)
    if denoiser is not None:
        denoiser.model = peft_model
        return denoiser
    return peft_model


def _mask_token_targets(base: nn.Module, mask_id: int, modules_to_save: Optional[Sequence[str]]):
    """trainable_token_indices for the MASK row: the input embeddings, plus an untied head (a tied
    head follows the embeddings). Layers saved in full (modules_to_save) need no row of their own."""
    emb, head = base.get_input_embeddings(), base.get_output_embeddings()
    names = {id(m): n for n, m in base.named_modules()}
    full = set(modules_to_save or ())
    targets = {}
    for layer in (emb, head):
        if layer is None or (layer is head and head.weight is emb.weight):
            continue
        name = names[id(layer)]
        if name in full or name.rsplit(".", 1)[-1] in full:
            continue
        targets[name] = [int(mask_id)]
    return targets or None


def lora_audit(model: Any, echo: bool = False) -> str:
    """A table of trainable vs frozen parameter counts and the names of the trainable tensors.
    Returns the table (and prints it with `echo`). Works on any nn.Module."""
    trainable, frozen = [], []
    for name, p in model.named_parameters():
        (trainable if p.requires_grad else frozen).append((name, p.numel()))
    n_t = sum(n for _, n in trainable)
    n_f = sum(n for _, n in frozen)
    total = n_t + n_f
    pct = 100.0 * n_t / total if total else 0.0
    lines = [
        f"{'':10s} {'tensors':>8s} {'params':>12s}",
        f"{'trainable':10s} {len(trainable):8d} {n_t:12,d}  ({pct:.3f}%)",
        f"{'frozen':10s} {len(frozen):8d} {n_f:12,d}",
        f"{'total':10s} {len(trainable) + len(frozen):8d} {total:12,d}",
        "trainable tensors:",
    ]
    lines += [f"  {name}  [{n:,d}]" for name, n in trainable] or ["  (none)"]
    table = "\n".join(lines)
    if echo:
        print(table)
    return table


def save_adapters(model: Any, directory: "str | os.PathLike", with_embeddings: bool = False) -> None:
    """Save the LoRA adapters alone (adapter_config.json + adapter_model.safetensors) into
    `directory`, via peft's save_pretrained: LoRA matrices, modules_to_save, trainable token rows
    (the MASK row, see the module docstring). The embedding matrices only `with_embeddings`
    (peft never asks the Hub here: the choice is explicit)."""
    peft_model = peft_model_of(model)
    os.makedirs(directory, exist_ok=True)
    peft_model.save_pretrained(str(directory), save_embedding_layers=bool(with_embeddings))


def load_adapters(base_model: Any, directory: "str | os.PathLike", is_trainable: bool = False):
    """Load adapters saved by :func:`save_adapters` onto `base_model` (a raw HF causal LM, or an
    HFDenoiser wrapping one, built exactly as when the adapters were trained: same weights, same
    MASK resizing). Returns a peft.PeftModel, or the same HFDenoiser with its wrapped model
    replaced. Only a local directory is read (never the Hub). `is_trainable`: keep the adapters
    trainable (default: frozen, for inference)."""
    from peft import PeftModel  # optional: peft, pip install 'diffusionlm[lora]'

    directory = os.fspath(directory)
    if not os.path.isfile(os.path.join(directory, "adapter_config.json")):
        raise FileNotFoundError(f"no adapter_config.json in {directory!r}: not a directory written by save_adapters")
    read_json_config(os.path.join(directory, "adapter_config.json"))  # no link, valid JSON, finite
    weights = no_symlink(os.path.join(directory, "adapter_model.safetensors"))
    if not weights.is_file():  # peft would fall back to adapter_model.bin, a pickle
        raise UntrustedFolderError(f"{directory} holds no adapter_model.safetensors: diffusionlm loads adapters from "
                                   "safetensors only (never a pickled adapter_model.bin)")
    denoiser = base_model if _is_denoiser(base_model) else None
    base = denoiser.model if denoiser is not None else base_model
    if isinstance(base, PeftModel):
        raise ValueError("the base model already carries peft adapters")
    try:
        peft_model = PeftModel.from_pretrained(base, directory, is_trainable=is_trainable)
    except RuntimeError as err:  # shapes that do not fit: another base

        trained_on = json.loads(open(os.path.join(directory, "adapter_config.json")).read()).get("base_model_name_or_path")
        given = getattr(getattr(base, "config", None), "_name_or_path", None) or type(base).__name__
        first = str(err).strip().splitlines()
        detail = next((l.strip() for l in first if "size mismatch" in l), first[0] if first else "")
        raise ValueError(
            f"the adapter in {directory!r} (trained on base {trained_on!r}) does not fit the base given ({given!r}): {detail}"
        ) from None
    if denoiser is not None:
        denoiser.model = peft_model
        return denoiser
    return peft_model
