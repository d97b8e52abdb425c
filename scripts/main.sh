#!/usr/bin/env bash
# The main job on a fresh clone: install the tested torch (CPU) and the package, then train,
# evaluate and compare AR and diffusion variants on the offline default corpus (the Python
# standard library's sources) as the default spec (diffusionlm/resources/default_compare.json)
# says: every variant the same number of steps, sized from a 4-minute training budget; about
# 6 minutes in all on a quiet 2-core machine. Extra arguments go to `diffusionlm compare`
# (e.g. --spec my.json, --budget-minutes 30 --preset gpt2-small --out runs/big).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e .
diffusionlm compare "$@"
