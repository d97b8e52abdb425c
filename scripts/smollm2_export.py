"""Export a trained LoRA run (recipes/smollm2-*.json) as a peft adapter, in peft's own format.

    python scripts/smollm2_export.py runs/smollm2-diffullama [--out runs/smollm2-diffullama/adapter]

Reads the run directory written by `diffusionlm train` (run.json and its newest checkpoint),
and writes ``adapter/``: ``adapter_config.json`` + ``adapter_model.safetensors`` (peft's
``save_pretrained``; the LoRA weights only, about 21 MB for r = 16) and a copy of ``run.json``
(the composition: process, hyperschedule, layout, MASK rule), so the adapter can be converted by
the toolkit's own save format later. Loading it needs peft alone plus the base rebuilt as in
training (the MASK row of ``mask="add"`` is the mean input embedding, deterministic):

    from peft import PeftModel
    from diffusionlm.fetch import load_causal_lm
    from diffusionlm.models.hf import HFDenoiser
    den = HFDenoiser.from_model(load_causal_lm("smollm2"), mask="add")
    den.model = PeftModel.from_pretrained(den.model, "runs/smollm2-diffullama/adapter")
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path


def export(run_dir: "str | Path", out: "str | Path | None" = None) -> Path:
    from diffusionlm.config import load_run
    from diffusionlm.models.lora import save_adapters

    run_dir = Path(run_dir)
    run, built = load_run(run_dir)
    if not run.model.lora:
        raise ValueError(f"{run_dir}: model.lora is not set in run.json: no adapter to export")
    out = Path(out) if out else run_dir / "adapter"
    save_adapters(built.lm.model, out)
    shutil.copy(run_dir / "run.json", out / "run.json")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="export a LoRA run as a peft adapter")
    ap.add_argument("run", help="a run directory written by `diffusionlm train`")
    ap.add_argument("--out", help="adapter folder (default: <run>/adapter)")
    args = ap.parse_args(argv)
    try:
        out = export(args.run, args.out)
    except (ValueError, FileNotFoundError) as err:
        print(f"smollm2_export: error: {err}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
