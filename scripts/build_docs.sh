#!/usr/bin/env bash
# Build the docs site (mkdocs-material + mkdocstrings) in strict mode into site/.
#   bash scripts/build_docs.sh            # build
#   bash scripts/build_docs.sh serve      # live preview on http://127.0.0.1:8000
set -euo pipefail
cd "$(dirname "$0")/.."
MKDOCS=${MKDOCS:-.venv/bin/mkdocs}
[ -x "$MKDOCS" ] || MKDOCS=mkdocs
export NO_MKDOCS_2_WARNING=1
if [ "${1:-}" = "serve" ]; then
  exec "$MKDOCS" serve --strict
fi
"$MKDOCS" build --strict --site-dir site
echo "docs built in site/ (open site/index.html)"
