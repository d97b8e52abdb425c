"""Score a checkpoint trained by nanoGPT's own train.py with study 1's metric (b).

    python experiments/01_ar_sanity/nanogpt_ckpt_metric.py NANOGPT_DIR CKPT [VAL_BIN]

NANOGPT_DIR is a checkout of karpathy/nanoGPT (its `model.py` builds the GPT), CKPT the
`ckpt.pt` its train.py wrote (read with torch.load(weights_only=True): tensors and plain values
only), VAL_BIN nanoGPT's `data/shakespeare_char/val.bin` (default: under NANOGPT_DIR; the
uint16 ids of the last 10% of tinyshakespeare, nanoGPT's `sorted(set(text))` vocabulary).

Metric (b) of `nanogpt_metric.py`, exactly, with no sampling noise: the 1,742 non-overlapping
64-character blocks of the validation ids; in each block nanoGPT's model reads x[0..62] and
position j predicts x[j+1] from the j+1 characters x[0..j], so the 63 predictions have 1..63
characters of context, the same contexts as our positions 1..63. Mean NLL in nats / character:

    (b) = mean over blocks and j = 0..62 of -log p(x[j+1] | x[0..j])

Also the same mean over the 240 windows of nanoGPT's estimator as `nanogpt_metric.py` draws
them (20 x 12 starts, seed 1337), for comparison with its (c). Prints one JSON object.
"""
import json
import os
import sys

import numpy as np
import torch


@torch.no_grad()
def nll_next(model, rows: torch.Tensor) -> torch.Tensor:
    """[S, d] -> [S, d-1]: -log p(x[j+1] | x[0..j]) under nanoGPT's GPT (targets given so that
    its forward returns the logits of every position, not only the last)."""
    inp, tgt = rows[:, :-1].contiguous(), rows[:, 1:].contiguous()
    logits, _ = model(inp, tgt)
    logp = torch.log_softmax(logits.double(), -1)
    return -logp.gather(-1, tgt[..., None]).squeeze(-1)


def main(nanogpt_dir: str, ckpt_path: str, val_bin: str = "") -> dict:
    sys.path.insert(0, nanogpt_dir)
    from model import GPT, GPTConfig  # nanoGPT's model.py

    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    model = GPT(GPTConfig(**ckpt["model_args"]))
    state = {k.removeprefix("_orig_mod."): v for k, v in ckpt["model"].items()}
    model.load_state_dict(state)
    model.eval()
    val = torch.from_numpy(np.fromfile(val_bin or os.path.join(nanogpt_dir, "data/shakespeare_char/val.bin"),
                                       dtype=np.uint16).astype(np.int64))
    d = 64
    blocks = val[: len(val) // d * d].view(-1, d)
    nll = torch.cat([nll_next(model, b) for b in blocks.split(128)])
    g = torch.Generator().manual_seed(1337)
    starts = torch.randint(len(val) - d, (20 * 12,), generator=g)
    win = nll_next(model, torch.stack([val[i: i + d] for i in starts.tolist()]))
    return {"ckpt": ckpt_path, "iter_num": int(ckpt["iter_num"]),
            "best_val_loss_printed_by_nanogpt": float(ckpt["best_val_loss"]),
            "blocks": int(blocks.shape[0]), "b_context_ge_1": float(nll.mean()),
            "c_240_windows_seed_1337": float(win.mean()),
            "c_stderr_over_windows": float(win.mean(1).std() / len(starts) ** 0.5)}


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:]), indent=2))
