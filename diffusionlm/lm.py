"""DiffusionLM: where a process, a hyperschedule and a denoiser meet.

    lm = DiffusionLM(model, Absorb(N), Block(16), layout="aligned")
    lm.loss(x0).loss.backward()          # training objective of a batch
    lm.nll_bound(x0, num_samples=M)      # Monte-Carlo NLL upper bound per sequence

Training loss (per batch): draw one step k per sequence (continuous time: l ~ U(0, 1)), corrupt
x0 at the step's levels, run the model under the step's attention mask, and average the
process's per-token loss over B * d (one normalisation for every process and schedule). Only
active positions carry loss; `settled_weight` (the paper's beta_1) adds plain CE on settled ones.
With `layout="two_halves"` every segment is trained at once ([x_noisy ; x_clean] input).

NLL bound (per sequence y, d tokens):
    discrete schedule:   NLL(y) <= d KL(q_1 || prior) + sum_{k=1..T} E KL(q(x_k | x_{k-1}, y) || p_theta)
    continuous (Flat()): NLL(y) <= d KL(q_1 || prior) + integral_0^1 E[process.continuous_bound] dl
estimated with M stratified draws of k (or l) per sequence: draw m uses u = (m + U) / M with
one U per sequence (low discrepancy), weight T per step. For Quench with M = T every step is
drawn exactly once, so for Absorb (whose x_{k-1} is then deterministic) the estimate is exact.
"""
from __future__ import annotations

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
from .hub import CompositionHubMixin
from .models.base import output_size
from .processes.base import Corruption, Process, check_ids, real_token_nll
from .schedules.hyper import ACTIVE, SETTLED, Flat, Hyperschedule, LevelDraw

__all__ = ["DiffusionLM", "LossOutput", "BoundOutput"]


class LossOutput(NamedTuple):
    loss: Tensor  # scalar: sum of per-token losses / (B * d)
    per_token: Tensor  # [B, d]
    corruption: Corruption
    draw: Any


class BoundOutput(NamedTuple):
    nll: Tensor  # [B] estimated NLL upper bound of each sequence (nats, summed over tokens)
    stderr: Tensor  # [B] standard error of that estimate over the M draws
    num_tokens: Tensor  # [B] tokens the bound covers
    samples: Tensor  # [B, M] the per-draw estimates

    @property
    def ppl(self) -> Tensor:
        """Perplexity bound of the batch: exp(total NLL / total tokens)."""
        return torch.exp(self.nll.sum() / self.num_tokens.sum())


def _logits(out: Any) -> Tensor:
    return out.logits if hasattr(out, "logits") else out[0] if isinstance(out, tuple) else out


@dataclass
class DiffusionLM(CompositionHubMixin):  # save_pretrained / from_pretrained / push_to_hub (diffusionlm.hub)
    model: Any
    process: Process
    schedule: Hyperschedule
    layout: "Layout | str" = Layout.ALIGNED
    bos_id: Optional[int] = None
    settled_weight: float = 0.0
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
        if self.layout is Layout.SHIFTED:
            if self.bos_id is None:
                raise ValueError("the SHIFTED layout needs bos_id: row 0 reads it")
            if not isinstance(self.bos_id, int) or self.bos_id < 0:
                raise ValueError(f"bos_id must be a non-negative int, got {self.bos_id!r}")
        if self.max_positions is None:
            cfg = getattr(self.model, "config", None)
            self.max_positions = getattr(cfg, "max_positions", None) or getattr(cfg, "max_position_embeddings", None)

    # -- plumbing --------------------------------------------------------------------
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
        out = self.model(
            ids,
            position_ids=position_ids,
            attention_mask=mask,
            levels=levels,
        )
        return _logits(out)

    def _mask_for(self, draw) -> tuple[Tensor, Any]:
        cats = categories_from_levels(draw.level, draw.next_level)
        if bool((cats == ACTIVE).all()):
            return cats, None  # every position active: full attention
        return cats, training_mask(cats, device=draw.level.device)

    # -- training --------------------------------------------------------------------
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
        if not self.process.likelihood:
            return self._structural_loss(x0, generator, response_mask)
        if two_halves:
            return self._two_halves_loss(x0, generator)
        draw = self.schedule.draw(B, d, generator=generator, u=u, device=x0.device)
        level = self.process.training_level(draw, generator)
        corr = self.process.corrupt(x0, level, generator=generator)
        cats, mask = self._mask_for(draw)
        if mask is None and self.annealing is not None:
            mask = self.annealing.mask(B, d, self.training_step, generator=generator, device=x0.device)
        logits = self.forward(corr.ids, level, mask)
        per_token = self.process.loss(logits, x0, corr, level, draw if draw.next_level is not None else None)
        per_token = torch.where(cats == ACTIVE, per_token, torch.zeros_like(per_token))
        if self.settled_weight:
            ce = real_token_nll(logits, x0, self.process.vocab_size)
            per_token = per_token + self.settled_weight * torch.where(cats == SETTLED, ce, torch.zeros_like(ce))
        if response_mask is not None:
            per_token = per_token * response_mask
        return LossOutput(per_token.sum() / (B * d), per_token, corr, draw)

    def _two_halves_loss(self, x0: Tensor, generator: Optional[torch.Generator]) -> LossOutput:
        B, d = x0.shape
        draw = self.schedule.draw_segments(B, d, generator=generator, device=x0.device)
        level = self.process.training_level(draw, generator)
        corr = self.process.corrupt(x0, level, generator=generator)
        ids, pos = two_halves_inputs(corr.ids, x0, draw.segment, Layout.ALIGNED)
        if self.layout is Layout.SHIFTED:
            ids, pos = two_halves_inputs(corr.ids, x0, draw.segment, self.layout, self.bos_id)
        # inside a segment the inference rule applies (settled / worthless positions at a
        # segment's edges are treated exactly as the inference step treats them)
        cats = categories_from_levels(draw.level, draw.next_level)
        mask = two_halves_mask(draw.segment, categories=cats, device=x0.device)
        levels = torch.cat([level, torch.zeros_like(level)], 1)
        out = self.model(
            ids, position_ids=pos, attention_mask=mask,
            levels=levels,
        )
        logits = _logits(out)[:, :d]
        per_token = self.process.loss(logits, x0, corr, level, draw)
        active = cats == ACTIVE
        per_token = torch.where(active, per_token, torch.zeros_like(per_token))
        return LossOutput(per_token.sum() / (B * d), per_token, corr, draw)

    def _structural_loss(self, x0, generator, response_mask) -> LossOutput:
        B, d = x0.shape
        corr = self.process.corrupt(x0, response_mask=response_mask, generator=generator)
        mask = None
        if self.annealing is not None:
            mask = self.annealing.mask(B, d, self.training_step, generator=generator, device=x0.device)
        logits = self.forward(corr.ids, torch.zeros(B, d, device=x0.device), mask)
        per_token = self.process.loss(logits, x0, corr, response_mask=response_mask)
        n = response_mask.sum() if response_mask is not None else torch.tensor(B * d)
        return LossOutput(per_token.sum() / n.clamp_min(1), per_token, corr, None)

    # -- likelihood ------------------------------------------------------------------
    @torch.no_grad()
    def nll_bound(
        self,
        x0: Tensor,
        num_samples: int = 16,
        generator: Optional[torch.Generator] = None,
    ) -> BoundOutput:
        """Monte-Carlo NLL upper bound of each sequence (see the module docstring)."""
        if not self.process.likelihood:
            raise ValueError(f"{self.process!r} declares no likelihood: no NLL bound or perplexity can be reported for it")
        if not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples (M) must be an int >= 1, got {num_samples!r}")
        self._check_batch(x0)
        B, d = x0.shape
        U = torch.rand(B, generator=generator, dtype=torch.float64)
        prior = float(self.process.prior_kl()) * d
        est = torch.zeros(B, num_samples, dtype=torch.float64)
        for m in range(num_samples):
            u = (m + U) / num_samples
            draw = self.schedule.draw(B, d, generator=generator, u=u, device=x0.device)
            corr = self.process.corrupt(x0, draw.level, generator=generator)
            cats, mask = self._mask_for(draw)
            logits = self.forward(corr.ids, draw.level, mask).double()
            if draw.next_level is None:
                terms = self.process.continuous_bound(logits, x0, corr, draw.level.double())
            else:
                terms = self.process.step_kl(logits, x0, corr.ids, draw.level, draw.next_level) * draw.num_steps
            est[:, m] = terms.double().sum(1).cpu() + prior
        nll = est.mean(1)
        stderr = est.std(1, unbiased=True) / num_samples**0.5 if num_samples > 1 else torch.full((B,), float("nan"))
        return BoundOutput(nll, stderr, torch.full((B,), d, dtype=torch.long), est)
