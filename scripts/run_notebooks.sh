#!/usr/bin/env bash
# Execute every tutorial notebook top to bottom with nbclient; fail on the first error.
#
#   bash scripts/run_notebooks.sh                 # all of tutorials/*.ipynb; executed copies in a temporary folder
#   bash scripts/run_notebooks.sh --inplace       # write the outputs back into the notebooks
#   bash scripts/run_notebooks.sh tutorials/quickstart.ipynb ...   # only these
#
# Each notebook runs with tutorials/ as its working folder, in the .venv kernel (PYTHON to
# choose another interpreter); one whose metadata says "itda_lens": {"environment": "tl3"}
# (the SAE Lens tutorial) runs in the .venv-tl3 kernel (PYTHON_TL3 to choose another).
# NOTEBOOK_TIMEOUT is the limit per cell, in seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python3
export PYTHON_TL3=${PYTHON_TL3:-.venv-tl3/bin/python}
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
# Kernel specs for this very interpreter and the TransformerLens 3 one, so no other Jupyter
# kernel is picked up.
kernels = Path(tempfile.mkdtemp(prefix="itda-kernel-"))
interpreters = {"itda-lens": sys.executable, "itda-lens-tl3": str(Path(os.environ["PYTHON_TL3"]).absolute())}
for name, python in interpreters.items():
    (kernels / "kernels" / name).mkdir(parents=True)
    spec = {"argv": [python, "-m", "ipykernel_launcher", "-f", "{connection_file}"], "display_name": name, "language": "python"}
    (kernels / "kernels" / name / "kernel.json").write_text(json.dumps(spec))
os.environ["JUPYTER_PATH"] = os.pathsep.join(filter(None, [str(kernels), os.environ.get("JUPYTER_PATH")]))
failed = []
for path in paths:
    notebook = nbformat.read(path, as_version=4)
    kernelspec = notebook.metadata.get("kernelspec")
    kernel = "itda-lens-tl3" if notebook.metadata.get("itda_lens", {}).get("environment") == "tl3" else "itda-lens"
    start = time.perf_counter()
    print(f"running {path} ...", flush=True)
    if not os.access(interpreters[kernel], os.X_OK):
        failed.append(path)
        print(f"FAILED  {path}: it needs the TransformerLens 3 / SAE Lens environment; run bash scripts/setup.sh or set PYTHON_TL3.", flush=True)
        continue
    client = NotebookClient(notebook, timeout=timeout, kernel_name=kernel, resources={"metadata": {"path": str(path.parent)}})
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
