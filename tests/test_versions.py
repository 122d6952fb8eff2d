"""The tested versions: the lock files scripts/setup.sh installs, and the warning for others."""

from __future__ import annotations

import warnings
from pathlib import Path

from itda_lens.backends import versions

LOCKS = sorted((Path(__file__).resolve().parents[1] / "requirements").glob("*.txt"))


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, pinned = line.partition("==")
            assert pinned, f"{path.name}: {line!r} is not an exact version"
            pins[name.lower().replace("_", "-")] = pinned
    return pins


def test_tested_versions_are_the_lock_files():
    assert [p.name for p in LOCKS] == ["tl3.txt", "tl4.txt"]
    locked: dict[str, set[str]] = {}
    for path in LOCKS:
        for name, pinned in _pins(path).items():
            locked.setdefault(name, set()).add(pinned)
    for name, tested in versions.TESTED.items():
        assert set(tested) == locked[name], name


def test_the_lock_files_pin_the_known_break_away():
    for path in LOCKS:
        assert _pins(path)["transformers"] != "5.24.0"


def test_untested_versions_warn_once_in_one_line(monkeypatch):
    monkeypatch.setattr(versions, "_warned", False)
    monkeypatch.setattr(versions, "version", lambda name: {"transformers": "5.24.0"}.get(name, versions.TESTED[name][0]))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        versions.warn_untested_versions()
        versions.warn_untested_versions()
    assert len(caught) == 1 and caught[0].category is versions.UntestedVersionsWarning
    message = str(caught[0].message)
    assert "\n" not in message and "transformers 5.24.0 (tested: 5.23.0)" in message and "scripts/setup.sh" in message


def test_tested_versions_do_not_warn(monkeypatch):
    monkeypatch.setattr(versions, "_warned", False)
    monkeypatch.setattr(versions, "version", lambda name: versions.TESTED[name][-1] + "+cpu")
    assert versions.untested_versions() == {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        versions.warn_untested_versions()

