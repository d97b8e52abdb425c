"""Check that study 1's training loss (Absorb + Quench, shifted, `two_halves: true`) is plain
next-character cross-entropy, as nanoGPT trains:

    python experiments/01_ar_sanity/two_halves_check.py [RUN_DIR]   (default experiments/01_ar_sanity/run/models/ar)

On 12 validation blocks of 64 characters, compares the trainer's per-token loss
(`DiffusionLM.loss(x0, two_halves=True).per_token`, what the optimizer minimises) with the causal
NLL -log p(x[j] | BOS, x[:j]) of one plain causal forward (`nanogpt_metric.per_position_nll`).
Under Quench every segment is one character, so each noisy row reads the clean previous
character and attends to the clean rows before it: the two must agree to float precision.
Prints one JSON object.
"""
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nanogpt_metric import per_position_nll  # noqa: E402

from diffusionlm.data import load_corpus  # noqa: E402
from diffusionlm.io.hub import load_model  # noqa: E402


@torch.no_grad()
def main(path: str = "experiments/01_ar_sanity/run/models/ar") -> dict:
    loaded = load_model(path)
    lm, tok, d = loaded.lm, loaded.tokenizer, 64
    lm.model.eval()
    val = torch.tensor(tok.encode(load_corpus("shakespeare_char", "validation")[0]))
    x0 = val[: 12 * d].view(12, d)
    train = lm.loss(x0, generator=torch.Generator().manual_seed(0), two_halves=True).per_token.double()
    causal = per_position_nll(lm, x0)
    return {"model": path, "rows": 12, "trainer_two_halves_loss": float(train.mean()),
            "causal_next_char_nll": float(causal.mean()),
            "max_abs_diff_per_token": float((train - causal).abs().max())}


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:]), indent=2))
