"""Study 1's checkable explanation of the metric: our validation NLL three ways, from the saved model.

    python experiments/01_ar_sanity/nanogpt_metric.py [RUN_DIR]     (default experiments/01_ar_sanity/run/models/ar)

(a) every position of the 1,742 non-overlapping 64-character validation blocks (what
    results.md reports): position j predicts x[j] from j characters (j = 0: BOS only);
(b) the same blocks, positions 1..63 only (context 1..63 characters), the contexts nanoGPT's
    positions 0..62 have (nanoGPT's position j sees j + 1 characters: its window's first
    character is given);
(c) nanoGPT's own estimator: the mean over all positions scored of 20 batches x 12 random windows
    (eval_iters=20, batch_size=12) drawn uniformly from the validation text, seed 1337 (as
    nanoGPT's train.py), scored as in (b) (positions with >= 1 character of context).
Prints one JSON object (nats / character).
"""
import json
import sys

import torch

from diffusionlm.data import load_corpus
from diffusionlm.io.hub import load_model
from diffusionlm.masks import causal_mask_mod, dense_mask, shift_inputs


@torch.no_grad()
def per_position_nll(lm, rows: torch.Tensor) -> torch.Tensor:
    """[S, d] -> [S, d] NLL of x[j] given [BOS, x[:j]] (one causal forward)."""
    S, d = rows.shape
    ids = shift_inputs(rows, "shifted", lm.bos_id)
    logits = lm.model(ids, position_ids=torch.arange(d)[None].expand(S, d), attention_mask=dense_mask(causal_mask_mod(), 1, d)).logits
    logp = torch.log_softmax(logits[..., : lm.process.vocab_size].double(), -1)
    return -logp.gather(-1, rows[..., None]).squeeze(-1)


def main(path: str = "experiments/01_ar_sanity/run/models/ar") -> dict:
    loaded = load_model(path)
    lm, tok, d = loaded.lm, loaded.tokenizer, 64
    val = torch.tensor(tok.encode(load_corpus("shakespeare_char", "validation")[0]))
    blocks = val[: len(val) // d * d].view(-1, d)
    nll = torch.cat([per_position_nll(lm, b) for b in blocks.split(128)])
    g = torch.Generator().manual_seed(1337)
    starts = torch.randint(len(val) - d, (20 * 12,), generator=g)
    win = per_position_nll(lm, torch.stack([val[i: i + d] for i in starts.tolist()]))
    return {"model": path, "blocks": int(blocks.shape[0]),
            "a_all_positions": float(nll.mean()), "b_context_ge_1": float(nll[:, 1:].mean()),
            "position_0_bos_only": float(nll[:, 0].mean()),
            "c_nanogpt_estimator_240_random_windows": float(win[:, 1:].mean()),
            "c_stderr_over_windows": float(win[:, 1:].mean(1).std() / len(starts) ** 0.5)}


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:]), indent=2))
