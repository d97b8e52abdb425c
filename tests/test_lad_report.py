"""scripts/smollm2_lad_report.py's measure(): the edit distances and the first call's kept /
restored fractions against a stub denoiser whose greedy prediction is a fixed table."""
import sys
from pathlib import Path

import torch

from diffusionlm.lm import DiffusionLM
from diffusionlm.models.base import DenoiserOutput
from diffusionlm.processes import Structural
from diffusionlm.schedules.hyper import Flat

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from smollm2_lad_report import measure  # noqa: E402

N = 20
MASK = N


class Table:
    """Predicts token target[j] at position j whatever the input (a fixed point after one call)."""

    def __init__(self, target):
        self.target, self.vocab_size = target, N + 1

    def __call__(self, input_ids, *, position_ids=None, attention_mask=None, levels=None, cache=None):
        B, L = input_ids.shape
        logits = torch.zeros(B, L, self.vocab_size)
        logits[:, torch.arange(L), self.target[:L]] = 10.0
        return DenoiserOutput(logits)


def test_measure_counts_kept_and_restored_tokens_of_the_first_call():
    orig = [1, 2, 3, 4, 5, 6, 7, 8]
    noisy = torch.tensor([[1, 2, 4, 3, 5, 5, 7, 8]])  # a swap at 2-3, a duplication at 5
    # the table keeps 5 of the 6 untouched positions (position 7 -> 9), restores 2 of the 3 changed ones
    # (2 and 3; not 5): the refined text differs from the original at positions 5 and 7
    target = torch.tensor([1, 2, 3, 4, 5, 5, 7, 9])
    lm = DiffusionLM(Table(target), Structural(N, mask_id=MASK), Flat())
    # a second sentence the table already reproduces and the noise left alone: 8 more kept tokens
    r = measure(lm, [orig, target.tolist()], [noisy, target[None].clone()], None, 4)
    assert [j for j in range(8) if int(noisy[0, j]) == orig[j]] == [0, 1, 4, 6, 7]
    assert r["first_call_kept"] == (4 + 8) / (5 + 8)  # position 7 of the first sentence is lost
    assert r["first_call_restored"] == 2 / 3  # positions 2 and 3 restored, 5 not
    assert r["edit_before"] == (3 / 8 + 0) / 2 and r["edit_after"] == (2 / 8 + 0) / 2
    assert r["improved"] == 1 and r["worsened"] == 0
    assert r["mean_calls"] == (2 + 1) / 2  # the first sentence changes once, then is a fixed point
    # tau above every probability: nothing is edited, nothing restored, every clean token kept
    r = measure(lm, [orig, target.tolist()], [noisy, target[None].clone()], 1.0, 4)
    assert r["first_call_kept"] == 1.0 and r["first_call_restored"] == 0.0 and r["edit_after"] == r["edit_before"]
