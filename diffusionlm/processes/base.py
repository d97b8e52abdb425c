"""The process contract, and the structured maths shared by every likelihood process.

Token set: N real tokens 0..N-1, plus MASK (id N unless given) for processes that use it;
`model_vocab_size` is the output size a denoiser must have.

Every likelihood process here moves a real token, between a less noisy level l' and a more
noisy level l, by two independent events (DESIGN.md):

    substitute  with prob p_sub(l', l): redraw uniformly from the N real tokens (maybe itself)
    mask        with prob p_mask(l', l): become MASK (MASK is absorbing)

so the one-step transition from a real token a has the structured form

    T(MASK | a) = p_mask
    T(a | a)    = (1 - p_mask) (1 - p_sub + p_sub / N)
    T(b | a)    = (1 - p_mask) p_sub / N            for b != a real

and the marginal q_l(. | y) is the transition from level 0. Everything else is derived
from these two numbers, in O(N) per position (never an N x N matrix):

    posterior  q(x_s | x_t, y) ∝ T_{s->t}(x_t | x_s) q_s(x_s | y); with a model's clean-token
               distribution p(y | x_t) (mean parametrisation), the model's reverse step is
               p(x_s | x_t) = T(x_t | x_s) sum_y p(y) q_s(x_s | y) / q_t(x_t | y)
    step KL    KL(q(x_s | x_t, y) || p(x_s | x_t)): one term of the discrete-step NLL bound
    prior KL   KL(q_1(. | y) || prior), prior = q_1 averaged over a uniform y
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ..checks import check_ids, check_levels, check_scores
from ..specs import Part
from ..schedules.noise import NoiseSchedule

__all__ = ["Corruption", "Process", "TokenSet", "check_ids", "check_levels", "mc_weight", "real_token_nll"]


def real_token_nll(logits: Tensor, x0: Tensor, vocab_size: int) -> Tensor:
    """-log p_theta(x0 | x) over the N real tokens (MASK is never a clean token): [B, d]."""
    logp = torch.log_softmax(logits[..., :vocab_size].float() if logits.dtype != torch.float64 else logits[..., :vocab_size], -1)
    return -logp.gather(-1, x0[..., None]).squeeze(-1)


def mc_weight(draw) -> "Tensor | float":
    """Monte-Carlo weight of one drawn step: T for a per-sequence draw, per-position weights for
    a per-segment draw, 1 in continuous time."""
    w = getattr(draw, "weight", None)
    if w is not None:
        return w
    return float(draw.num_steps) if getattr(draw, "num_steps", None) else 1.0


class Corruption(NamedTuple):
    """A corrupted batch and what happened to each token.

    ids:          [B, d] corrupted ids
    masked:       [B, d] bool, the token became MASK
    substituted:  [B, d] bool, the token was redrawn uniformly (maybe to itself) and not masked
    info:         process-specific extras (e.g. Structural's per-row noise draws)
    """

    ids: Tensor
    masked: Tensor
    substituted: Tensor
    info: Optional[dict] = None


@dataclass(frozen=True)
class TokenSet:
    """N real tokens and an optional MASK id."""

    vocab_size: int
    mask_id: Optional[int]

    @property
    def model_vocab_size(self) -> int:
        """The output size a denoiser needs: covers every real id and MASK."""
        if self.mask_id is None:
            return self.vocab_size
        return max(self.vocab_size, self.mask_id + 1)


def _xlogy_over(p: Tensor, q: Tensor) -> Tensor:
    """p log(p / q) with 0 log 0 = 0."""
    return torch.where(p > 0, p * (torch.log(p.clamp_min(1e-300)) - torch.log(q.clamp_min(1e-300))), 0.0)


class Process(Part, kind="process"):
    """Interface of a corruption process. See the module docstring for the shared maths.

    Subclasses set `likelihood`, `time_conditioned`, and implement `event_probs` (or, for
    processes outside the substitute/mask family, override `corrupt` and `loss`).
    """

    name: ClassVar[str] = "process"
    #: whether loss / bound are likelihood bounds (Structural: False)
    likelihood: ClassVar[bool] = True
    #: whether a backbone needs the noise level as input to be well specified
    time_conditioned: ClassVar[bool] = False
    #: trained with a continuous-time objective (score entropy) rather than per-step weights
    continuous_time_loss: ClassVar[bool] = False

    def __init__(self, vocab_size: int, mask_id: Optional[int], noise: NoiseSchedule):
        if not isinstance(vocab_size, int) or vocab_size < 2:
            raise ValueError(f"vocab_size must be an int >= 2, got {vocab_size!r}")
        if mask_id is not None and (not isinstance(mask_id, int) or mask_id < 0):
            raise ValueError(f"mask_id must be a non-negative int, got {mask_id!r}")
        if mask_id is not None and mask_id < vocab_size:
            raise ValueError(
                f"mask_id {mask_id} collides with a real token (vocab_size {vocab_size}); "
                "MASK must be an id >= vocab_size"
            )
        self.tokens = TokenSet(vocab_size, mask_id)
        self.noise = noise

    # -- token set -----------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.tokens.vocab_size

    @property
    def mask_id(self) -> Optional[int]:
        return self.tokens.mask_id

    @property
    def model_vocab_size(self) -> int:
        return self.tokens.model_vocab_size

    def check_model_vocab(self, size: int) -> None:
        """Composition-time check that a model's output size fits this process."""
        if size != self.model_vocab_size:
            extra = f" (N={self.vocab_size} real tokens + MASK id {self.mask_id})" if self.mask_id is not None else ""
            raise ValueError(
                f"model output size {size} does not fit {self!r}: it needs {self.model_vocab_size}{extra}"
            )

    def config(self) -> dict:
        """The older name of `to_dict`."""
        return self.to_dict()

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k not in ("name", "noise"))
        return f"{type(self).__name__}({args})"

    # -- argument checks (one line at the top of each public method) ---------------------------
    def _check_clean(self, logits: Tensor, x0: Tensor) -> None:
        """x0: real token ids; logits: a score per token (at least the N real ones) at each position."""
        check_ids(x0, self.vocab_size, "x0 (clean ids)")
        check_scores(logits, x0, self.vocab_size, "logits")

    def _check_loss(self, logits: Tensor, x0: Tensor, corruption: "Corruption", level: Tensor) -> None:
        """The arguments every `loss` takes."""
        self._check_clean(logits, x0)
        if tuple(corruption.ids.shape) != tuple(x0.shape):
            raise ValueError(f"corruption of shape {tuple(corruption.ids.shape)} does not fit x0 of shape {tuple(x0.shape)}")
        check_levels(level, x0, "level")

    def _check_step(self, x_t: Tensor, level_t: Tensor, level_s: Tensor, x0: Optional[Tensor] = None) -> None:
        """A reverse step's arguments: x_t ids of the model vocabulary (MASK included), levels in
        [0, 1] with level_s <= level_t, x_t shaped as x0 when given."""
        check_ids(x_t, self.model_vocab_size, "x_t")
        if x0 is not None and tuple(x_t.shape) != tuple(x0.shape):
            raise ValueError(f"x_t of shape {tuple(x_t.shape)} does not fit x0 of shape {tuple(x0.shape)}")
        if bool((check_levels(level_s, x_t, "level_s") > check_levels(level_t, x_t, "level_t")).any()):
            raise ValueError("level_s must not exceed level_t: a reverse step goes from the noisier level_t to level_s")

    # -- the structured transition ----------------------------------------------------
    def event_probs(self, level_from: Tensor, level_to: Tensor) -> tuple[Tensor, Tensor]:
        """(p_mask, p_sub) of moving a real token from level_from to the noisier level_to."""
        raise NotImplementedError

    def _keep_ratio(self, level_from: Tensor, level_to: Tensor) -> Tensor:
        """alpha(level_to) / alpha(level_from), defined as 1 where alpha(level_from) = 0."""
        a_from = self.noise.alpha(level_from)
        a_to = self.noise.alpha(level_to)
        safe = torch.where(a_from > 0, a_from, torch.ones_like(a_from))
        return torch.where(a_from > 0, (a_to / safe).clamp(0.0, 1.0), torch.ones_like(a_from))

    def transition(self, level_from: Tensor, level_to: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(m, k, u): prob of MASK, of staying the same real token, of each other real token."""
        p_mask, p_sub = self.event_probs(level_from, level_to)
        n = self.vocab_size
        keep = 1.0 - p_mask
        return p_mask, keep * (1.0 - p_sub + p_sub / n), keep * p_sub / n

    def marginal(self, level: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(m, k, u) of q_l(. | y)."""
        return self.transition(torch.zeros_like(level), level)

    # -- sampling the forward process ---------------------------------------------------
    def corrupt(self, x0: Tensor, level: Tensor, generator: Optional[torch.Generator] = None) -> Corruption:
        """x at per-position `level` ([B, d] or broadcastable) from clean x0."""
        check_ids(x0, self.vocab_size, "clean ids")
        level = check_levels(level.to(x0.device), x0)
        p_mask, p_sub = self.event_probs(torch.zeros_like(level), level)
        r = torch.rand((3,) + x0.shape, generator=generator, device=x0.device if generator is None else generator.device)
        r = r.to(x0.device)
        substituted = r[0] < p_sub
        masked = r[1] < p_mask
        redraw = (r[2] * self.vocab_size).long().clamp_(max=self.vocab_size - 1)
        ids = torch.where(substituted, redraw, x0)
        if self.mask_id is not None:
            ids = torch.where(masked, torch.full_like(ids, self.mask_id), ids)
        return Corruption(ids, masked, substituted & ~masked)

    def prior(self, shape: tuple, generator: Optional[torch.Generator] = None, device=None) -> Tensor:
        """A draw of x at level 1 with y unknown: the level-1 marginal averaged over uniform y."""
        level = torch.ones(shape, device=device)
        m, _, _ = self.marginal(level)
        r = torch.rand((2,) + tuple(shape), generator=generator).to(level.device)
        ids = (r[0] * self.vocab_size).long().clamp_(max=self.vocab_size - 1)
        if self.mask_id is not None:
            ids = torch.where(r[1] < m, torch.full_like(ids, self.mask_id), ids)
        return ids

    def prior_kl(self, level: Optional[Tensor] = None) -> Tensor:
        """KL(q_1(. | y) || prior) per position (the same for every y)."""
        level = torch.ones(()) if level is None else check_levels(level, what="level")
        m, k, u = self.marginal(level.double())
        pbar = (1.0 - m) / self.vocab_size
        return _xlogy_over(k, pbar) + (self.vocab_size - 1) * _xlogy_over(u, pbar)

    # -- dense forms (tests, small N) ------------------------------------------------------
    def transition_matrix(self, level_from: float, level_to: float) -> Tensor:
        """Dense [V, V] matrix T[to, from] with V = model_vocab_size (small N only)."""
        lf = torch.tensor(float(level_from), dtype=torch.float64)
        lt = torch.tensor(float(level_to), dtype=torch.float64)
        m, k, u = self.transition(lf, lt)
        V, n = self.model_vocab_size, self.vocab_size
        T = torch.zeros(V, V, dtype=torch.float64)
        T[:n, :n] = u
        T[torch.arange(n), torch.arange(n)] = k
        if self.mask_id is not None:
            T[self.mask_id, :n] = m
            T[self.mask_id, self.mask_id] = 1.0
        return T

    def marginal_probs(self, x0: Tensor, level: Tensor) -> Tensor:
        """Dense q_l(. | x0): [..., V] float64 (small N only)."""
        m, k, u = self.marginal(level.double().expand(x0.shape))
        out = torch.zeros(*x0.shape, self.model_vocab_size, dtype=torch.float64)
        out[..., : self.vocab_size] = u[..., None]
        if self.mask_id is not None:
            out[..., self.mask_id] = m
        out.scatter_(-1, x0[..., None], k[..., None])
        return out

    # -- reverse step and the discrete-step bound ----------------------------------------
    def clean_probs(self, logits: Tensor) -> Tensor:
        """The model's distribution over the N real clean tokens (MASK and extra ids excluded)."""
        return torch.softmax(logits[..., : self.vocab_size].double(), dim=-1)

    def posterior_probs(self, x_t: Tensor, level_t: Tensor, level_s: Tensor, clean_probs: Tensor) -> Tensor:
        """p(x_s | x_t) = T(x_t | x_s) sum_y p(y) q_s(x_s | y) / q_t(x_t | y): [B, d, V] float64.

        clean_probs [B, d, N] is the clean-token distribution: a one-hot y gives the exact
        posterior q(x_s | x_t, y); a model's prediction gives its reverse step.
        """
        self._check_step(x_t, level_t, level_s)
        check_scores(clean_probs, x_t, self.vocab_size, "clean_probs", exact=True)
        n, V = self.vocab_size, self.model_vocab_size
        level_t, level_s = level_t.double(), level_s.double()
        p = clean_probs.double()
        ms, ks, us = self.marginal(level_s)
        mt, kt, ut = self.marginal(level_t)
        mst, kst, ust = self.transition(level_s, level_t)
        is_mask = x_t == self.mask_id if self.mask_id is not None else torch.zeros_like(x_t, dtype=torch.bool)
        xt_real = torch.where(is_mask, torch.zeros_like(x_t), x_t).clamp(max=n - 1)
        # Z(y) = q_t(x_t | y): m_t if x_t is MASK; k_t if y == x_t; u_t otherwise.
        onehot_xt = F.one_hot(xt_real, n).bool()
        Z = torch.where(onehot_xt, kt[..., None], ut[..., None])
        Z = torch.where(is_mask[..., None], mt[..., None], Z)
        ratio = torch.where(p > 0, p / Z.clamp_min(1e-300), torch.zeros_like(p))  # p(y) / Z(y)
        R = ratio.sum(-1)  # sum_y p(y) / Z(y)
        # A(a) = sum_y p(y) q_s(a | y) / Z(y) for real a; A(MASK) = m_s R.
        A_real = ks[..., None] * ratio + us[..., None] * (R[..., None] - ratio)
        # T(x_t | a): x_t MASK -> m_st for real a, 1 for a = MASK; x_t real b -> k_st if a == b else u_st.
        T_real = torch.where(onehot_xt, kst[..., None], ust[..., None])
        T_real = torch.where(is_mask[..., None], mst[..., None], T_real)
        out = torch.zeros(*x_t.shape, V, dtype=torch.float64, device=x_t.device)
        out[..., :n] = T_real * A_real
        if self.mask_id is not None:
            out[..., self.mask_id] = torch.where(is_mask, ms * R, torch.zeros_like(R))
        return out / out.sum(-1, keepdim=True).clamp_min(1e-300)

    def step_kl(self, logits: Tensor, x0: Tensor, x_t: Tensor, level_t: Tensor, level_s: Tensor) -> Tensor:
        """KL(q(x_s | x_t, x0) || p_theta(x_s | x_t)) per position: [B, d] float64."""
        self._check_clean(logits, x0)
        self._check_step(x_t, level_t, level_s, x0)
        n = self.vocab_size
        true = self.posterior_probs(x_t, level_t, level_s, F.one_hot(x0, n).double())
        model = self.posterior_probs(x_t, level_t, level_s, self.clean_probs(logits))
        kl = _xlogy_over(true, model).sum(-1)
        # Positions that do not move (level_t == level_s) contribute nothing.
        return torch.where(level_t.double() == level_s.double(), torch.zeros_like(kl), kl)

    # -- training loss -------------------------------------------------------------------
    def training_level(self, draw, generator: Optional[torch.Generator] = None) -> Tensor:
        """The level at which to corrupt for a training draw (l[k-1]; continuous: u)."""
        return draw.level

    def loss(self, logits: Tensor, x0: Tensor, corruption: Corruption, level: Tensor, draw=None) -> Tensor:
        """Per-token training loss [B, d] at the corruption `level`; `draw` (a LevelDraw or
        SegmentDraw, None for continuous time) gives the step and its Monte-Carlo weight."""
        raise NotImplementedError

    def continuous_bound(self, logits: Tensor, x0: Tensor, corruption: Corruption, level: Tensor) -> Tensor:
        """Per-token integrand (already weighted by the level density) of the continuous-time NLL bound."""
        raise NotImplementedError(f"{type(self).__name__} has no continuous-time bound; use a discrete schedule")
