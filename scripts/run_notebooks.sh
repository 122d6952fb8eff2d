#!/usr/bin/env bash
# Execute every tutorial notebook top to bottom with nbclient; fail on the first error.
#
#   bash scripts/run_notebooks.sh                 # all of tutorials/*.ipynb; executed copies in a temporary folder
#   bash scripts/run_notebooks.sh --inplace       # write the outputs back into the notebooks
#   bash scripts/run_notebooks.sh tutorials/quickstart.ipynb ...   # only these
#
# Each notebook runs with tutorials/ as its working folder, in the .venv kernel (PYTHON to
# choose another interpreter). NOTEBOOK_TIMEOUT is the limit per cell, in seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python3
exec "$PYTHON" - "$@" <<'PY'
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

args = sys.argv[1:]
inplace = "--inplace" in args
paths = [Path(a) for a in args if a != "--inplace"] or sorted(Path("tutorials").glob("*.ipynb"))
if not paths:
    sys.exit("no notebooks found in tutorials/")
out_dir = Path(os.environ.get("NOTEBOOK_OUT") or tempfile.mkdtemp(prefix="itda-notebooks-"))
out_dir.mkdir(parents=True, exist_ok=True)
timeout = int(os.environ.get("NOTEBOOK_TIMEOUT", "1800"))
# A kernel spec for this very interpreter, so no other Jupyter kernel is picked up.
kernels = Path(tempfile.mkdtemp(prefix="itda-kernel-"))
(kernels / "kernels" / "itda-lens").mkdir(parents=True)
spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"], "display_name": "itda-lens", "language": "python"}
(kernels / "kernels" / "itda-lens" / "kernel.json").write_text(json.dumps(spec))
os.environ["JUPYTER_PATH"] = os.pathsep.join(filter(None, [str(kernels), os.environ.get("JUPYTER_PATH")]))
failed = []
for path in paths:
    notebook = nbformat.read(path, as_version=4)
    kernelspec = notebook.metadata.get("kernelspec")
    client = NotebookClient(
        notebook, timeout=timeout, kernel_name="itda-lens", resources={"metadata": {"path": str(path.parent)}}
    )
    start = time.perf_counter()
    print(f"running {path} ...", flush=True)
    try:
        client.execute()
        status = "ok"
    except CellExecutionError as err:
        failed.append(path)
        status = "FAILED"
        print(str(err)[-4000:], file=sys.stderr)
    target = path if inplace and status == "ok" else out_dir / path.name
    if kernelspec is not None:
        notebook.metadata["kernelspec"] = kernelspec
    nbformat.write(notebook, target)
    print(f"{status:>6}  {path}  {time.perf_counter() - start:.0f} s  -> {target}", flush=True)
if failed:
    sys.exit(f"{len(failed)} notebook(s) failed: {', '.join(map(str, failed))}")
print(f"all {len(paths)} notebooks ran")
PY
