#!/usr/bin/env bash
# The two SmolLM2 adaptations of docs/smollm2, one after the other (each about 45 minutes on 2
# quiet cores): the adaptation corpus, DiffuLLaMA-style LoRA (recipes/smollm2-diffullama.json),
# then LAD LoRA (recipes/smollm2-lad.json). `diffusionlm train` saves each as a composition in
# runs/smollm2-<name>/model/: the LoRA adapter in peft's own format (backbone/, the MASK row as
# peft trainable tokens) with run.json beside it. Extra arguments are passed to both trainings as
# overrides (e.g. train.steps=20 for a smoke run). Training resumes from runs/<name>/LATEST when
# interrupted. One thread: on a shared machine two threads mostly wait on each other.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
python -m diffusionlm.cli fetch smollm2
[ -f runs/smollm2-data/train.jsonl ] || python scripts/smollm2_data.py
for name in diffullama lad; do
    python -m diffusionlm.cli train --config "recipes/smollm2-$name.json" "train.out_dir=runs/smollm2-$name" "$@"
done
