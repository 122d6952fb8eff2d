#!/usr/bin/env bash
# Record the exact versions in .venv and .venv-tl3 as requirements/tl4.txt and tl3.txt, the
# files scripts/setup.sh installs from. Run it after the suite passed in those environments
# (for an upgrade: ITDA_LENS_VERSIONS=latest bash scripts/test.sh, then copy or rebuild the
# environments), and update itda_lens/versions.py's TESTED ranges to match (a test checks).
set -euo pipefail
cd "$(dirname "$0")/.."
lock() {  # lock VENV FILE
  { echo "# Exact versions the test suite passed with in $1 (made by scripts/lock.sh)."
    "$1/bin/pip" freeze --exclude-editable | grep -v '^#' | sed 's/^torch==\(.*\)+cpu$/torch==\1/' | sort -f
  } > "$2"
  echo "wrote $2"
}
lock .venv requirements/tl4.txt
lock .venv-tl3 requirements/tl3.txt
