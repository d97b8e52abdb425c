"""An oracle denoiser for toy distributions: exact clean-token conditionals by enumeration."""
import itertools

import torch

from diffusionlm.models.base import DenoiserOutput


def all_sequences(n: int, d: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product(range(n), repeat=d)), dtype=torch.long)


def toy_distribution(n: int = 3, d: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A random, strongly non-uniform distribution over all n^d sequences."""
    ys = all_sequences(n, d)
    g = torch.Generator().manual_seed(seed)
    logits = 2.5 * torch.randn(len(ys), generator=g, dtype=torch.float64)
    return ys, torch.softmax(logits, 0)


class Oracle:
    """p(y^i | x_t) exactly: posterior over all sequences given per-position levels (ALIGNED rows)."""

    def __init__(self, process, ys: torch.Tensor, p: torch.Tensor):
        self.process, self.ys, self.p = process, ys, p
        self.vocab_size = process.model_vocab_size

    def clean_probs(self, x: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
        m, k, u = (t.double() for t in self.process.marginal(levels.double()))  # [B, d]
        is_mask = x == self.process.mask_id if self.process.mask_id is not None else torch.zeros_like(x, dtype=torch.bool)
        same = x[:, None, :] == self.ys[None]  # [B, S, d]
        lik = torch.where(same, k[:, None], u[:, None])
        lik = torch.where(is_mask[:, None], m[:, None].expand_as(lik), lik)
        post = self.p[None] * lik.prod(-1)  # [B, S]
        post = post / post.sum(-1, keepdim=True)
        onehot = torch.nn.functional.one_hot(self.ys, self.process.vocab_size).double()  # [S, d, N]
        return torch.einsum("bs,sdn->bdn", post, onehot)

    def __call__(self, input_ids, *, position_ids=None, attention_mask=None, levels=None, cache=None):
        probs = self.clean_probs(input_ids, levels)
        logits = torch.full((*input_ids.shape, self.vocab_size), -1e30, dtype=torch.float64)
        logits[..., : self.process.vocab_size] = torch.log(probs.clamp_min(1e-300))
        return DenoiserOutput(logits)
