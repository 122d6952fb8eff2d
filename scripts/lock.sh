#!/usr/bin/env bash
# Record the exact versions in .venv and .venv-tl3 as requirements/tl4.txt and tl3.txt, the
# files scripts/setup.sh installs from, after the suite passed there. For an upgrade:
#   ITDA_LENS_VERSIONS=latest bash scripts/test.sh && ITDA_LENS_VERSIONS=latest bash scripts/lock.sh
# records .venv-latest and .venv-tl3-latest instead. Then set itda_lens/backends/versions.py's TESTED
# to the new versions (tests/test_versions.py checks that they agree).
set -euo pipefail
cd "$(dirname "$0")/.."
lock() {  # lock VENV FILE
  { echo "# Exact versions the test suite passed with in $1 (made by scripts/lock.sh)."
    "$1/bin/pip" freeze --exclude-editable | grep -v '^#' | sed 's/^torch==\(.*\)+cpu$/torch==\1/' | sort -f
  } > "$2"
  echo "wrote $2"
}
SUFFIX=""
if [ "${ITDA_LENS_VERSIONS:-tested}" = latest ]; then SUFFIX="-latest"; fi
lock ".venv$SUFFIX" requirements/tl4.txt
lock ".venv-tl3$SUFFIX" requirements/tl3.txt
