#!/usr/bin/env bash
# Retrain the shipped block-diffusion adapter `smollm2-block` (issue 22, docs/smollm2/block.md) in one
# command, about an hour on 2 quiet cores: SmolLM2 (fetched once), its own samples as data (about
# 17 min; seed 0, the same corpus every time), blended with as many tokens of English news (NEWS_RATIO
# news tokens a sampled one; 0.5 was trial 13), then recipes/smollm2-block.json (31-38 min). Each step is skipped
# when its product exists; the training resumes from runs/smollm2-block/LATEST when interrupted.
# Extra arguments are overrides for the training (e.g. train.steps=20 for a smoke run).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
NEWS_RATIO="${NEWS_RATIO:-1.0}"
python -m diffusionlm.cli fetch smollm2
[ -f runs/smollm2-selfdistil/train.jsonl ] || \
    python scripts/smollm2_data.py --mix base-samples --tokens 150000 --out runs/smollm2-selfdistil/train.jsonl
[ -f runs/smollm2-blend/train.jsonl ] || \
    python scripts/smollm2_data.py --mix english+base-samples --base-samples runs/smollm2-selfdistil/train.jsonl \
        --news-ratio "$NEWS_RATIO" --out runs/smollm2-blend/train.jsonl
python -m diffusionlm.cli train --config recipes/smollm2-block.json train.out_dir=runs/smollm2-block "$@"
