#!/usr/bin/env bash
# The main job on a fresh clone: install the tested torch (CPU) and the package, then train,
# evaluate and compare AR and diffusion variants on the offline default corpus (the Python
# standard library's sources), in under 10 minutes on 2 CPU cores. Extra arguments go to
# `diffusionlm compare` (e.g. --budget-minutes 30 --preset gpt2-small --out runs/big).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e .
diffusionlm compare "$@"
