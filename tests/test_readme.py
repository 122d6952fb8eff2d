"""Every Python and shell block of README.md runs, in the order the README shows them.

Python blocks share one namespace; shell blocks run with bash, with this checkout's
``itda-lens`` command. All run in a fresh folder holding ``valid.txt`` (WikiText-2's
validation split). Slow: it builds two dictionaries of 5,000 tokens on the real
SmolLM2-135M-Instruct and evaluates each on 2,000 (a few minutes on two CPU cores).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)

#: Shell lines that set up environments (install PyTorch and every package, run the whole
#: suite): they are what this test runs inside, so they are skipped, with the reason.
SETUP = {
    "bash scripts/quickstart.sh": "makes .venv and builds the quickstart dictionary (scripts/quickstart.sh is the set-up itself)",
    "bash scripts/test.sh": "makes .venv and .venv-tl3 and runs the whole test suite, this test included",
    "ITDA_LENS_VERSIONS=latest": "makes .venv-latest and .venv-tl3-latest from the newest releases (network, minutes)",
}


def readme_blocks() -> list[tuple[str, str]]:
    """The README's ``python`` and ``bash`` blocks, in order, as (language, code)."""
    return [(language, code) for language, code in BLOCK.findall(README.read_text()) if language in ("python", "bash")]


def skipped(line: str) -> str | None:
    """Why a shell line is not run, or ``None``."""
    return next((why for start, why in SETUP.items() if line.strip().startswith(start)), None)


def shell_commands(code: str) -> list[str]:
    """The commands of a shell block (continuation lines joined), without comments."""
    commands = [line.split("  #")[0].rstrip() for line in code.replace("\\\n", " ").splitlines()]
    return [command for command in commands if command.strip()]


def test_the_readme_has_the_blocks_this_test_expects():
    blocks = readme_blocks()
    assert [language for language, _ in blocks] == ["bash", "bash", "python", "bash", "python"]
    shell = [command for language, code in blocks if language == "bash" for command in shell_commands(code)]
    assert [command for command in shell if skipped(command)] == shell[:3]  # the set-up block and the newest-releases one


def test_readme_code_runs(wikitext, tmp_path, monkeypatch, capsys):
    shutil.copy(wikitext, tmp_path / "valid.txt")
    monkeypatch.chdir(tmp_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env["PATH"]])
    namespace: dict = {"__name__": "readme"}
    for number, (language, code) in enumerate(readme_blocks()):
        if language == "python":
            exec(compile(code, f"README.md block {number}", "exec"), namespace)
            continue
        for command in shell_commands(code):
            why = skipped(command)
            if why:
                print(f"skipped `{command}`: {why}")
                continue
            done = subprocess.run(["bash", "-euo", "pipefail", "-c", command], env=env, capture_output=True, text=True, timeout=1200)
            assert done.returncode == 0, f"`{command}` failed:\n{done.stderr[-3000:]}"
            assert done.stdout.strip().splitlines()[-1].startswith("{")  # --json: one JSON object last
    itda, scores = namespace["itda"], namespace["scores"]
    assert itda.n_atoms >= itda.k and scores["fvu"] < 1
    assert (tmp_path / "l15" / "config.json").exists()
    printed = capsys.readouterr().out
    assert "blocks.15.hook_resid_post: metric" in printed and printed.count("skipped `") == 3
