#!/usr/bin/env bash
# Set up, then build and evaluate a dictionary at blocks.15.hook_resid_post of the embedded
# SmolLM2-135M-Instruct, on the built-in corpus (no network, no files needed).
set -euo pipefail
cd "$(dirname "$0")/.."
ITDA_LENS_SKIP_TL3=1 bash scripts/setup.sh
. .venv/bin/activate
mkdir -p runs
itda-lens train --hook blocks.15.hook_resid_post --max-tokens 20000 --out runs/quickstart --overwrite --json
itda-lens eval runs/quickstart --max-tokens 5000 --json
echo "dictionary in runs/quickstart (growth plot: runs/quickstart/growth.png)"
