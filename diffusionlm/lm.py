"""DiffusionLM: where a process, a hyperschedule and a denoiser meet.

    lm = DiffusionLM(model, Absorb(N), Block(16), layout="aligned")
    lm.loss(x0).loss.backward()          # training objective of a batch
    lm.nll_bound(x0, num_samples=M)      # NLL upper bound per sequence, with a valid stderr

Training loss (per batch): draw one step k per sequence (continuous time: l ~ U(0, 1)), corrupt
x0 at the step's levels, run the model under the step's attention mask, and average the
process's per-token loss over B * d (one normalisation for every process and schedule). Only
active positions carry loss. The hyperschedules paper's eq. 10 adds beta_1 x CE on settled
positions: `settled_weight` is beta_1, and `settled_weighting="eq11"` multiplies position i's
settled CE by eq. 11's

    w(i) = floor(i / omega) / (ceil(d / omega) - 1)      (w = 1 when ceil(d / omega) = 1)

with omega the schedule's window width at length d (`settled_weighting="uniform"`: w = 1).
With `layout="two_halves"` every segment is trained at once ([x_noisy ; x_clean] input); there
the paper needs no settled reweighting and beta_1 is refused (not silently dropped).

Model inputs: besides ids, positions, mask and the levels, the backbone gets whatever the process
asks for (`model_inputs`): GammaHybrid(weighted_embedding=True) gives eq. 12's per-position
embedding weight w = e^{-gamma sigma_bar(l)} as `embedding_weight`, in the loss, the bound and
(through the samplers' driver) sampling. A backbone that cannot take it is refused at composition.

A process that constrains the hyperschedule or layout says so (`process.check_schedule`,
`process.check_two_halves`: Structural honours only Flat and no two-halves layout); the
composition calls them, so a combination it cannot honour is an error naming both.

NLL bound: `nll_bound` is `diffusionlm.eval.bound.conditional_nll_bound` with nothing fixed --
the one estimator of every caller (exact when every step is enumerated and the corruption is
deterministic; otherwise stratified over steps with R independent random shifts and a stderr
from the spread of the replicates; EpsilonHybrid's clean-up steps computed exactly, on their own
line). See that module for the definitions.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any, NamedTuple, Optional

import torch
from torch import Tensor

from .masks import (
    Layout,
    categories_from_levels,
    shift_inputs,
    training_mask,
    two_halves_inputs,
    two_halves_mask,
)
from .eval.bound import BoundOutput, conditional_nll_bound
from .hub import CompositionHubMixin
from .models.base import output_size
from .processes.base import Corruption, Process, check_ids, real_token_nll
from .schedules.hyper import ACTIVE, SETTLED, Hyperschedule

__all__ = ["DiffusionLM", "LossOutput", "BoundOutput", "SETTLED_WEIGHTINGS", "eq11_weights", "check_two_halves_rows"]


class LossOutput(NamedTuple):
    loss: Tensor  # scalar: sum of per-token losses / (B * d)
    per_token: Tensor  # [B, d]
    corruption: Corruption
    draw: Any


def _logits(out: Any) -> Tensor:
    return out.logits if hasattr(out, "logits") else out[0] if isinstance(out, tuple) else out


SETTLED_WEIGHTINGS = ("uniform", "eq11")


def eq11_weights(d: int, omega: int) -> Tensor:
    """The hyperschedules paper's eq. 11: w(i) = floor(i / omega) / (ceil(d / omega) - 1), [d]
    float32; all 1 when ceil(d / omega) = 1."""
    blocks = math.ceil(d / omega)
    if blocks == 1:
        return torch.ones(d)
    return (torch.arange(d) // omega).float() / (blocks - 1)


def _accepts(model: Any, name: str) -> bool:
    """Whether the model's forward takes keyword `name` (or **kwargs)."""
    fn = getattr(model, "forward", None) or model
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # pragma: no cover - builtins
        return False
    return any(p.name == name or p.kind is p.VAR_KEYWORD for p in params)


def check_two_halves_rows(length: int, rows: Optional[int], what: str) -> None:
    """ValueError when the two-halves layout's 2 x length rows exceed `rows` (None: no limit)."""
    if rows is not None and 2 * length > rows:
        raise ValueError(f"two-halves training feeds 2 x {length} = {2 * length} rows per sequence, more than the "
                         f"{rows} positions of {what}: use a length of at most {rows // 2} or train.two_halves=false")


@dataclass
class DiffusionLM(CompositionHubMixin):  # save_pretrained / from_pretrained / push_to_hub (diffusionlm.hub)
    model: Any
    process: Process
    schedule: Hyperschedule
    layout: "Layout | str" = Layout.ALIGNED
    bos_id: Optional[int] = None
    #: beta_1 of the hyperschedules paper's eq. 10: weight of the plain CE on settled positions
    settled_weight: float = 0.0
    #: how settled positions are weighted inside that CE: "uniform" or "eq11" (paper's eq. 11)
    settled_weighting: str = "uniform"
    max_positions: Optional[int] = None
    #: DiffuGPT's attention-mask annealing (e.g. models.hf.AttentionAnnealing): during training,
    #: where the schedule asks for full attention, use causal OR Bernoulli(ratio(step)) instead
    annealing: Any = None
    #: the optimizer step, kept current by the trainer (read by `annealing`)
    training_step: int = 0

    def __post_init__(self) -> None:
        self.layout = Layout(self.layout)
        # Checked here, at composition, not as a shape error deep inside a forward pass.
        self.process.check_model_vocab(output_size(self.model))
        check_schedule = getattr(self.process, "check_schedule", None)
        if callable(check_schedule):
            check_schedule(self.schedule)
        self._check_model_inputs()
        if self.layout is Layout.SHIFTED:
            if self.bos_id is None:
                raise ValueError("the SHIFTED layout needs bos_id: row 0 reads it")
            if not isinstance(self.bos_id, int) or self.bos_id < 0:
                raise ValueError(f"bos_id must be a non-negative int, got {self.bos_id!r}")
        if isinstance(self.settled_weight, bool) or not isinstance(self.settled_weight, (int, float)) or not (
            math.isfinite(self.settled_weight) and self.settled_weight >= 0
        ):
            raise ValueError(f"settled_weight (beta_1) must be a finite number >= 0, got {self.settled_weight!r}")
        if self.settled_weighting not in SETTLED_WEIGHTINGS:
            raise ValueError(f"settled_weighting must be one of {SETTLED_WEIGHTINGS}, got {self.settled_weighting!r}")
        if self.max_positions is None:
            cfg = getattr(self.model, "config", None)
            self.max_positions = getattr(cfg, "max_positions", None) or getattr(cfg, "max_position_embeddings", None)

    def _check_model_inputs(self) -> None:
        """The eq. 12 weighted embedding: the process asks for it iff the backbone expects it."""
        asks = self.process_asks_embedding_weight
        cfg = getattr(self.model, "config", None)
        gamma = getattr(cfg, "weighted_embedding_gamma", None)
        name = type(self.model).__name__
        if asks:
            if not _accepts(self.model, "embedding_weight"):
                raise ValueError(
                    f"{self.process!r} asks for the eq. 12 weighted embedding, but the backbone {name} takes no "
                    "embedding_weight input"
                )
            mask_id = getattr(cfg, "mask_id", self.process.mask_id)
            if mask_id != self.process.mask_id:
                raise ValueError(
                    f"the eq. 12 embedding mixes in f(MASK): the backbone's mask_id {mask_id!r} is not the "
                    f"process's {self.process.mask_id!r} (build the backbone with "
                    "TransformerConfig.preset(name, **diffusionlm.specs.backbone_defaults(process)))"
                )
            if gamma is not None and abs(gamma - getattr(self.process, "gamma", gamma)) > 1e-12:
                raise ValueError(
                    f"the backbone's weighted_embedding_gamma {gamma} is not the process's gamma {self.process.gamma}"
                )
        elif gamma is not None:
            raise ValueError(
                f"the backbone {name} expects the eq. 12 weighted embedding (weighted_embedding_gamma={gamma}) but "
                f"{self.process!r} does not provide it: use a process with weighted_embedding=True"
            )

    # -- plumbing --------------------------------------------------------------------
    @property
    def process_asks_embedding_weight(self) -> bool:
        return bool(getattr(self.process, "weighted_embedding", False))

    def model_inputs(self, levels: Tensor) -> dict:
        """Extra backbone inputs the process asks for at per-position `levels` [B, L]: eq. 12's
        {"embedding_weight": w} for a weighted-embedding process, {} otherwise. Every model call of
        the composition and of the samplers' driver adds these."""
        if not self.process_asks_embedding_weight:
            return {}
        return {"embedding_weight": self.process.embedding_weight(levels)}

    def _check_batch(self, x0: Tensor) -> None:
        if x0.dim() != 2:
            raise ValueError(f"expected a [B, d] batch of token ids, got shape {tuple(x0.shape)}")
        check_ids(x0, self.process.vocab_size, "token ids")
        if self.max_positions is not None and x0.shape[1] > self.max_positions:
            raise ValueError(f"sequence length {x0.shape[1]} exceeds the model's {self.max_positions} positions")

    def forward(self, x_t: Tensor, levels: Tensor, mask: Any, position_ids: Optional[Tensor] = None) -> Tensor:
        """Logits [B, L, V] of the model on corrupted ids x_t (row space) under `mask`."""
        B, L = x_t.shape
        ids = shift_inputs(x_t, self.layout, self.bos_id)
        if position_ids is None:
            position_ids = torch.arange(L, device=x_t.device)[None].expand(B, L)
        return self._call(ids, position_ids, mask, levels)

    def _call(self, ids: Tensor, position_ids: Tensor, mask: Any, levels: Tensor) -> Tensor:
        out = self.model(ids, position_ids=position_ids, attention_mask=mask, levels=levels, **self.model_inputs(levels))
        return _logits(out)

    def _mask_for(self, draw) -> tuple[Tensor, Any]:
        cats = categories_from_levels(draw.level, draw.next_level)
        if bool((cats == ACTIVE).all()):
            return cats, None  # every position active: full attention
        return cats, training_mask(cats, device=draw.level.device)

    # -- training --------------------------------------------------------------------
    def check_two_halves_length(self, length: int) -> None:
        """Refuse, before training, a two-halves run whose 2 x length rows the backbone cannot take
        (an HF model with fewer positions; our transformer takes them, its position ids stay < length)."""
        check_two_halves_rows(length, getattr(self.model, "max_rows", None), f"this {type(self.model).__name__}")

    def loss(
        self,
        x0: Tensor,
        generator: Optional[torch.Generator] = None,
        response_mask: Optional[Tensor] = None,
        two_halves: bool = False,
        u: Optional[Tensor] = None,
    ) -> LossOutput:
        """Training loss of a batch x0 [B, d] (see the module docstring). `u` ([B] in [0, 1))
        fixes each sequence's step instead of drawing it."""
        self._check_batch(x0)
        B, d = x0.shape
        if two_halves:
            check = getattr(self.process, "check_two_halves", None)
            if callable(check):
                check(self.schedule)
            if self.settled_weight:
                raise ValueError(
                    f"settled_weight (beta_1) = {self.settled_weight} applies to the per-sequence layout; the "
                    "two-halves layout trains every segment at once and has no settled CE term: use two_halves=False "
                    "or settled_weight=0"
                )
            return self._two_halves_loss(x0, generator, response_mask)
        draw = self.schedule.draw(B, d, generator=generator, u=u, device=x0.device)
        if not self.process.likelihood:
            return self._structural_loss(x0, draw, generator, response_mask)
        level = self.process.training_level(draw, generator)
        corr = self.process.corrupt(x0, level, generator=generator)
        cats, mask = self._mask_for(draw)
        if mask is None and self.annealing is not None:
            mask = self.annealing.mask(B, d, self.training_step, generator=generator, device=x0.device)
        logits = self.forward(corr.ids, level, mask)
        per_token = self.process.loss(logits, x0, corr, level, draw if draw.next_level is not None else None)
        per_token = torch.where(cats == ACTIVE, per_token, torch.zeros_like(per_token))
        if self.settled_weight:
            per_token = per_token + self._settled_ce(logits, x0, cats)
        if response_mask is not None:
            per_token = per_token * response_mask
        return LossOutput(per_token.sum() / (B * d), per_token, corr, draw)

    def _settled_ce(self, logits: Tensor, x0: Tensor, cats: Tensor) -> Tensor:
        """beta_1 x w(i) x CE at settled positions (eq. 10 and 11), [B, d]."""
        ce = real_token_nll(logits, x0, self.process.vocab_size)
        w = torch.full_like(ce, float(self.settled_weight))
        if self.settled_weighting == "eq11":
            d = x0.shape[1]
            w = w * eq11_weights(d, self.schedule.width(d)).to(ce.device, ce.dtype)
        return torch.where(cats == SETTLED, w * ce, torch.zeros_like(ce))

    def _two_halves_loss(self, x0: Tensor, generator: Optional[torch.Generator], response_mask=None) -> LossOutput:
        B, d = x0.shape
        draw = self.schedule.draw_segments(B, d, generator=generator, device=x0.device)
        level = self.process.training_level(draw, generator)
        corr = self.process.corrupt(x0, level, generator=generator)
        ids, pos = two_halves_inputs(corr.ids, x0, draw.segment, self.layout, self.bos_id)
        # inside a segment the inference rule applies (settled / worthless positions at a
        # segment's edges are treated exactly as the inference step treats them)
        cats = categories_from_levels(draw.level, draw.next_level)
        mask = two_halves_mask(draw.segment, categories=cats, device=x0.device)
        levels = torch.cat([level, torch.zeros_like(level)], 1)
        logits = self._call(ids, pos, mask, levels)[:, :d]
        per_token = self.process.loss(logits, x0, corr, level, draw)
        per_token = torch.where(cats == ACTIVE, per_token, torch.zeros_like(per_token))
        if response_mask is not None:
            per_token = per_token * response_mask
        return LossOutput(per_token.sum() / (B * d), per_token, corr, draw)

    def _structural_loss(self, x0, draw, generator, response_mask) -> LossOutput:
        """A process without likelihood (Structural): its corruption at the drawn level (the row's
        masking fraction under Flat), plain CE over the response positions."""
        B, d = x0.shape
        corr = self.process.corrupt(x0, draw.level, generator=generator, response_mask=response_mask)
        mask = None
        if self.annealing is not None:
            mask = self.annealing.mask(B, d, self.training_step, generator=generator, device=x0.device)
        logits = self.forward(corr.ids, torch.zeros(B, d, device=x0.device), mask)
        per_token = self.process.loss(logits, x0, corr, draw.level, draw, response_mask=response_mask)
        n = response_mask.sum() if response_mask is not None else torch.tensor(B * d)
        return LossOutput(per_token.sum() / n.clamp_min(1), per_token, corr, draw)

    # -- likelihood ------------------------------------------------------------------
    def nll_bound(
        self,
        x0: Tensor,
        num_samples: int = 16,
        generator: "Optional[torch.Generator] | list" = None,
        replicates: Optional[int] = None,
    ) -> BoundOutput:
        """NLL upper bound of each sequence with M = num_samples model evaluations per row:
        `diffusionlm.eval.bound.conditional_nll_bound` with nothing fixed (module docstring)."""
        if isinstance(x0, Tensor):
            self._check_batch(x0)
        return conditional_nll_bound(self, x0, num_samples, generator=generator, replicates=replicates)
