#!/usr/bin/env bash
# Set up and run the whole test suite on a fresh clone (CPU). The tested torch is installed
# first: a loose torch requirement with no torch present would pull the CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[test]"
# tests read the offline evaluation data beside the checkout unless told otherwise
export DIFFUSIONLM_DATA="${DIFFUSIONLM_DATA:-$(cd .. && pwd)/shared/data}"
python -m pytest -q "$@"
