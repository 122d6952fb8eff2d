"""The versions of the libraries itda-lens adapts that its test suite passed with.

``scripts/setup.sh`` installs exactly these (``requirements/tl4.txt`` for TransformerLens 4,
``requirements/tl3.txt`` for TransformerLens 3 and SAE Lens); a test keeps :data:`TESTED`
equal to those files. :func:`load_model <itda_lens.backends.models.load_model>` warns once when an
installed version is not among them, since an untested release has broken results before:
transformers 5.24 makes ``TransformerBridge.generate`` with its KV cache (the default)
continue every prompt with garbage.
"""

from __future__ import annotations

import warnings
from importlib.metadata import PackageNotFoundError, version

from packaging.version import Version

#: Package name -> the versions the suite passed with (one per tested environment).
TESTED: dict[str, tuple[str, ...]] = {
    "torch": ("2.13.0",),
    "transformers": ("5.23.0",),
    "transformer-lens": ("3.9.0", "4.3.0"),
    "nnsight": ("0.8.1",),
    "sae-lens": ("6.54.12",),
    "datasets": ("5.2.0",),
    "numba": ("0.68.1",),
}

_warned = False


class UntestedVersionsWarning(UserWarning):
    """An installed library is at a version the test suite did not pass with."""


def untested_versions() -> dict[str, str]:
    """Installed packages of :data:`TESTED` at another version: name -> installed version."""
    found = {}
    for name, tested in TESTED.items():
        try:
            installed = version(name)
        except PackageNotFoundError:
            continue
        if Version(installed).public not in {Version(v).public for v in tested}:
            found[name] = installed
    return found


def warn_untested_versions() -> None:
    """Warn, once per process and in one line, if :func:`untested_versions` finds any."""
    global _warned
    if _warned:
        return
    _warned = True
    found = untested_versions()
    if found:
        listed = ", ".join(f"{name} {installed} (tested: {' or '.join(TESTED[name])})" for name, installed in found.items())
        warnings.warn(
            f"itda-lens was not tested with {listed}; results may be wrong. "
            "Install the tested versions: bash scripts/setup.sh, or pip install -c requirements/tl4.txt (tl3.txt for TransformerLens 3).",
            UntestedVersionsWarning,
            stacklevel=3,
        )
