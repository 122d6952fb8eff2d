"""The plots are written as PNGs, and importing itda-lens leaves matplotlib's backend alone."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from itda_lens.tools.plots import attribution_plot, growth_plot

PNG = b"\x89PNG\r\n\x1a\n"

#: Imports every module of itda_lens (those whose optional library is missing are
#: skipped), draws a plot and prints the backend.
IMPORT_ALL = """
import importlib, pkgutil, sys
import itda_lens
for module in pkgutil.walk_packages(itda_lens.__path__, "itda_lens."):
    try:
        importlib.import_module(module.name)
    except ModuleNotFoundError as err:
        print("skipped", module.name, err, file=sys.stderr)
from itda_lens.tools.plots import growth_plot
growth_plot({"hook": [[1, 1, 0.5], [2, 2, 0.25]]}, sys.argv[1])
import matplotlib
print(matplotlib.get_backend())
"""


def test_plots_are_pngs(tmp_path):
    growth = growth_plot({"blocks.0.hook_resid_post": [[100, 10, 0.9], [200, 15, 0.5]]}, tmp_path / "growth.png")
    bars = attribution_plot([3, 7], [0.5, -0.25], ["the", "cat\nsat"], tmp_path / "bars.png")
    assert growth.read_bytes().startswith(PNG) and bars.read_bytes().startswith(PNG)


def test_importing_itda_lens_keeps_the_matplotlib_backend(tmp_path):
    env = {**os.environ, "MPLBACKEND": "svg", "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", IMPORT_ALL, str(tmp_path / "growth.png")], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "svg"
    assert (tmp_path / "growth.png").read_bytes().startswith(PNG)
