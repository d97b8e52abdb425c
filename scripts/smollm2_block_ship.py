"""Ship the SmolLM2 block-diffusion adapter inside the package (issue 22): the saved composition of
a training of recipes/smollm2-block.json written to diffusionlm/resources/models/smollm2-block/
(`--model smollm2-block` on every command, `diffusionlm.fetch.SHIPPED`), its LoRA adapter in
bfloat16 (--dtype float32 keeps it as trained), and its card shipped.json: the recipe and command,
steps and tokens, the bound and the base's exact AR NLL from the report, and the sha256 of the base
it expects (the pinned GGUF) and of the adapter file.

    python scripts/smollm2_block_ship.py --run runs/smollm2-block --report docs/smollm2/block/final.json \
        [--dtype bfloat16] [--out diffusionlm/resources/models/smollm2-block]
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from diffusionlm.io.fetch import SHIPPED_CARD, SOURCES, sha256_file
from diffusionlm.io.hub import load_model

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True)
    ap.add_argument("--report", required=True, help="scripts/smollm2_block_report.py's JSON of the same weights")
    ap.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16")
    ap.add_argument("--out", default=str(REPO / "diffusionlm" / "resources" / "models" / "smollm2-block"))
    args = ap.parse_args()
    run = Path(args.run)
    m = load_model(run)
    report = json.loads(Path(args.report).read_text())
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    recipe = json.loads((run / "run.json").read_text())
    last = metrics[-1]
    tokens = sum(r["tokens"] for r in metrics if "tokens" in r)
    training = {"recipe": "recipes/smollm2-block.json", "steps": last["step"], "tokens": tokens,
                "batch_size": recipe["train"]["batch_size"], "ar_anchor": recipe["train"].get("ar_anchor", 0.0),
                "curriculum": recipe["train"].get("curriculum"), "data": recipe["data"],
                "command": "bash scripts/smollm2_block_train.sh"}
    # the bound on the card: the exact one (eval/block_exact.py) where the report has it, else the
    # Monte-Carlo estimate at Block(4, 4) with its stderr
    if "exact" in report:
        bound = {"schedule": "Block(4, 4)", **report["exact"]["4x4"],
                 "block_4_64": {"schedule": "Block(4, 64)", **report["exact"]["4x64"]}}
    else:
        bound = {"schedule": "Block(4, 4)", **report["bound"]["4x4"]}
    out = Path(args.out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    m.lm.save_pretrained(tmp, tokenizer=m.tokenizer, training=training)
    adapter = tmp / "backbone" / "adapter_model.safetensors"
    if args.dtype == "bfloat16":
        tensors = load_file(str(adapter))
        save_file({k: v.to(torch.bfloat16).contiguous() for k, v in sorted(tensors.items())}, str(adapter),
                  metadata={"format": "pt"})
    card = {
        "name": out.name,
        "what": f"SmolLM2-135M-Instruct adapted from AR to block diffusion: Absorb (linear alpha), Block(4, 4), "
                f"{m.lm.layout.value.upper()}, LoRA r = 16 on every projection (the MASK row: the mean embedding, frozen), "
                f"trained on 2 CPU cores",
        "base": {"name": "smollm2", "gguf_sha256": SOURCES["smollm2"].sha256, "description": SOURCES["smollm2"].description,
                 "note": "de-quantised from the 4-bit Q4_1 GGUF by `diffusionlm fetch smollm2`, not the published float weights"},
        "adapter": {"file": "backbone/adapter_model.safetensors", "dtype": args.dtype,
                    "sha256": sha256_file(adapter), "bytes": adapter.stat().st_size},
        "training": training,
        "bound": {**bound, "data": report["data"], "weights": "the float32 adapter as trained"},
        "base_ar_nll": report["ar"],
        "report": args.report,
    }
    (tmp / SHIPPED_CARD).write_text(json.dumps(card, indent=1) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(json.dumps({"out": str(out), "bytes": size, "adapter_sha256": card["adapter"]["sha256"]}, indent=1))


if __name__ == "__main__":
    main()
