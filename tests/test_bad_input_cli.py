"""Bad input to the ``itda-lens`` command, run as a user runs it.

Every case must end with status 2 (130 for Ctrl-C) and exactly one line on stderr that
names the option or the fix, with no traceback; files that were there before must be
unchanged. Each case is its own process running ``itda_lens.tools.cli`` as ``__main__`` from
this checkout, offline: forks of one interpreter that has imported torch
(``tests/cli_processes.py``), so that sixty cases cost seconds, not minutes. Ctrl-C, and
one case repeated to show that both give the same, run as ``python -m itda_lens.tools.cli``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from itda_lens.core.itda import ITDA

REPO = Path(__file__).resolve().parents[1]
HOOK = "blocks.0.hook_resid_post"
#: A little of the built-in corpus, for the cases that need the model.
SMALL = ["--max-tokens", "62", "--seq-len", "32", "--batch-size", "2", "--no-progress"]
#: The files of the workspace the cases point at.
WORKSPACE = ("file", "notes", "dict", "multi", "clash", "latin1", "blank", "jsonl", "number_jsonl", "empty_dir", "read_only")
#: A Python warning (``file:line: SomeWarning: ...``) and the source line printed under it.
_WARNING = re.compile(r"^\S.*:\d+: \w*Warning: ")


def _environment() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    env.pop("ITDA_LENS_DEBUG", None)
    return env


def run_cli(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "itda_lens.tools.cli", *argv]
    return subprocess.run(command, capture_output=True, text=True, env=_environment(), cwd=cwd, timeout=600)


def error_lines(stderr: str) -> list[str]:
    """The lines of stderr, less Python warnings (a library may warn while loading)."""
    lines, skip = [], False
    for line in stderr.splitlines():
        if skip and line.startswith(" "):
            continue
        skip = bool(_WARNING.match(line))
        if not skip and line.strip():
            lines.append(line)
    return lines


def _read_only_folder(root: Path) -> Path:
    """A folder this process cannot write in (root ignores permissions, not /sys)."""
    if os.geteuid() == 0:
        return Path("/sys")
    folder = root / "read-only"
    folder.mkdir()
    folder.chmod(0o500)
    return folder


def _workspace(root: Path) -> dict[str, Path]:
    """The files the cases point at."""
    paths = {}
    paths["file"] = root / "a-file.txt"
    paths["file"].write_text("a file, not a folder\n")
    paths["notes"] = root / "notes"
    paths["notes"].mkdir()
    (paths["notes"] / "mine.txt").write_text("a user's file\n")
    atoms = torch.randn(8, 576)
    paths["dict"] = ITDA.from_atoms(atoms, k=2, hook=HOOK).save(root / "dict")
    paths["multi"] = root / "multi"
    paths["multi"].mkdir()
    ITDA.from_atoms(atoms, k=2, hook="blocks.1.hook_resid_post").save(paths["multi"] / "blocks.1.hook_resid_post")
    paths["clash"] = root / "clash"
    paths["clash"].mkdir()
    (paths["clash"] / "blocks.1.hook_resid_post").write_text("a file where a hook folder would go\n")
    paths["latin1"] = root / "latin1.txt"
    paths["latin1"].write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    paths["blank"] = root / "blank.txt"
    paths["blank"].write_text("\n   \n\n")
    paths["jsonl"] = root / "bad.jsonl"
    paths["jsonl"].write_text('{"body": "no text field"}\n{"text": "fine"}\n')
    paths["number_jsonl"] = root / "number.jsonl"
    paths["number_jsonl"].write_text('{"text": 42}\n')
    paths["empty_dir"] = root / "not-a-model"
    paths["empty_dir"].mkdir()
    (paths["empty_dir"] / "readme.txt").write_text("no model here\n")
    paths["read_only"] = _read_only_folder(root)
    return paths


def _cases(p: dict[str, Path], out: Path) -> dict[str, tuple[list[str], list[str]]]:
    """``{case: (argv, fragments the one error line must hold)}``; ``out`` is a fresh
    folder per case (``{out}`` in argv)."""
    train = ["train", "--hook", HOOK, "--out", "{out}"]
    small_train = [*train, *SMALL, "--k", "2"]
    saved = ["compare", "--dictionaries-a", str(p["dict"]), "--dictionaries-b", str(p["dict"]), "--out", "{out}"]
    cases = {
        # numbers of the build and of the text, refused when the command line is read
        "train --k 0": (train + ["--k", "0"], ["--k", "at least 1"]),
        "train --k -3": (train + ["--k", "-3"], ["--k"]),
        "train --k two": (train + ["--k", "two"], ["--k", "whole number"]),
        "train --threshold 0": (train + ["--threshold", "0"], ["--threshold", "between 0 and 1"]),
        "train --threshold 1": (train + ["--threshold", "1"], ["--threshold"]),
        "train --threshold 1.5": (train + ["--threshold", "1.5"], ["--threshold"]),
        "train --threshold nan": (train + ["--threshold", "nan"], ["--threshold"]),
        "train --max-atoms 0": (train + ["--max-atoms", "0"], ["--max-atoms"]),
        "train --max-atoms < --k": (train + ["--k", "8", "--max-atoms", "4"], ["--max-atoms", "--k (8)"]),
        "train --batch-size 0": (train + ["--batch-size", "0"], ["--batch-size"]),
        "train --checkpoint-every 0": (train + ["--checkpoint-every", "0"], ["--checkpoint-every"]),
        "train --step-tokens -1": (train + ["--step-tokens", "-1"], ["--step-tokens"]),
        "train --max-tokens 0": (train + ["--max-tokens", "0"], ["--max-tokens"]),
        "train --max-tokens 1.5": (train + ["--max-tokens", "1.5"], ["--max-tokens", "whole number"]),
        "train --seq-len 1": (train + ["--seq-len", "1"], ["--seq-len", "at least 2"]),
        "train --dtype float13": (train + ["--dtype", "float13"], ["--dtype", "float32"]),
        "train --dtype int8": (train + ["--dtype", "int8"], ["--dtype"]),
        "train --device gpu": (train + ["--device", "gpu"], ["--device", "cpu"]),
        "train --device cuda:99": (train + ["--device", "cuda:99"], ["--device", "cpu"]),
        "train --text-file and --dataset": (train + ["--text-file", str(p["file"]), "--dataset", "x"], ["--dataset", "not both"]),
        "train without --hook": (["train", "--out", "{out}"], ["--hook"]),
        "eval --batch-size 0": (["eval", str(p["dict"]), "--batch-size", "0"], ["--batch-size"]),
        "eval --max-tokens -5": (["eval", str(p["dict"]), "--max-tokens", "-5"], ["--max-tokens"]),
        "eval --dtype half-ish": (["eval", str(p["dict"]), "--dtype", "half-ish"], ["--dtype"]),
        "browse --top 0": (["browse", str(p["dict"]), "--top", "0"], ["--top"]),
        "browse --device tpu": (["browse", str(p["dict"]), "--device", "tpu"], ["--device"]),
        "compare --shared-tokens 0": (saved + ["--shared-tokens", "0"], ["--shared-tokens"]),
        "compare --baseline-tokens 0": (saved + ["--baseline-tokens", "0"], ["--baseline-tokens"]),
        "compare --record-fraction 1.5": (saved + ["--record-fraction", "1.5"], ["--record-fraction"]),
        "compare --k 0": (saved + ["--k", "0"], ["--k"]),
        "compare --threshold 2": (saved + ["--threshold", "2"], ["--threshold"]),
        "compare --max-atoms < --k": (saved + ["--max-atoms", "2", "--k", "3"], ["--max-atoms"]),
        "compare --min-overlap 0.4": (saved + ["--min-overlap", "0.4"], ["--min-overlap", "(0.5, 1]"]),
        "compare --min-overlap < 1 with --by token": (saved + ["--min-overlap", "0.6", "--by", "token"], ["--min-overlap", "--by span"]),
        "compare --measures unknown": (saved + ["--measures", "cka"], ["--measures", "itda_weighted_jaccard"]),
        # output folders and files, checked before any model is loaded
        "train --out is a file": (["train", "--hook", HOOK, "--out", str(p["file"])], ["is a file"]),
        "train --out parent missing": (["train", "--hook", HOOK, "--out", str(out / "no" / "such")], ["does not exist", "create it"]),
        "train --out not writable": (["train", "--hook", HOOK, "--out", str(p["read_only"] / "itda-out")], ["cannot write", "--out"]),
        "train --out holds other files": (["train", "--hook", HOOK, "--out", str(p["notes"])], ["mine.txt", "--overwrite"]),
        "train --out holds a dictionary": (["train", "--hook", HOOK, "--out", str(p["dict"])], ["already holds a dictionary", "--overwrite"]),
        "train --out holds one of several hooks": (
            ["train", "--hook", HOOK, "--hook", "blocks.1.hook_resid_post", "--out", str(p["multi"])],
            ["blocks.1.hook_resid_post", "already holds a dictionary", "--overwrite"],
        ),
        "train a file where a hook folder goes": (
            ["train", "--hook", HOOK, "--hook", "blocks.1.hook_resid_post", "--out", str(p["clash"]), "--overwrite"],
            ["blocks.1.hook_resid_post", "is a file"],
        ),
        "browse --out is a folder": (["browse", str(p["dict"]), "--no-usage", "--out", str(p["notes"])], ["is a folder"]),
        "browse --out not writable": (["browse", str(p["dict"]), "--no-usage", "--out", str(p["read_only"] / "b.html")], ["cannot write"]),
        "compare --out is a file": (saved[:-1] + [str(p["file"])], ["is a file"]),
        "compare without inputs": (["compare", "--out", "{out}"], ["--model-a", "--dictionaries-a"]),
        "compare one model": (["compare", "--model-a", "x", "--out", "{out}"], ["--model-b"]),
        # the text, read before any model is loaded
        "train --text-file missing": (train + ["--text-file", str(out / "missing.txt")], ["--text-file", "does not exist"]),
        "train --text-file is a folder": (train + ["--text-file", str(p["notes"])], ["not a regular file"]),
        "train --text-file not UTF-8": (train + ["--text-file", str(p["latin1"])], ["UTF-8"]),
        "train --text-file blank": (train + ["--text-file", str(p["blank"])], ["no documents", "train split"]),
        "train --text-file bad JSON lines": (train + ["--text-file", str(p["jsonl"])], ["bad.jsonl:1", "'text' field"]),
        "train --text-file text not a string": (train + ["--text-file", str(p["number_jsonl"])], ["number.jsonl:1", "'text' field"]),
        "train --dataset offline": (train + ["--dataset", "nobody/no-such-dataset"], ["--dataset nobody/no-such-dataset", "network"]),
        "eval --text-file missing": (["eval", str(p["dict"]), "--text-file", str(out / "none.txt")], ["--text-file"]),
        # dictionaries that are not there
        "eval a missing dictionary": (["eval", str(out / "nothing")], ["no dictionary folder"]),
        "eval a folder that is not a dictionary": (["eval", str(p["notes"])], ["notes", "dictionary"]),
        "browse a missing dictionary": (["browse", str(out / "nothing"), "--no-usage"], ["nothing", "dictionary"]),
        "compare a missing dictionary": (["compare", "--dictionaries-a", str(out / "none"), "--dictionaries-b", str(p["dict"]), "--out", "{out}"], ["no dictionary folder"]),
        # cases that load the model
        "train --model unknown": (small_train + ["--model", "nobody/no-such-model"], ["nobody/no-such-model"]),
        "train --model a folder that is not a model": (small_train + ["--model", str(p["empty_dir"])], ["not-a-model"]),
        "train --seq-len beyond the context": (small_train + ["--seq-len", "100000"], ["--seq-len", "8192"]),
        "train an attention pattern": (
            ["train", "--hook", "blocks.0.attn.hook_pattern", "--out", "{out}", *SMALL],
            ["blocks.0.attn.hook_pattern", "[batch, pos, d_model]"],
        ),
        "train an unknown hook": (["train", "--hook", "blocks.0.hook_resid_psot", "--out", "{out}", *SMALL], ["Close matches", HOOK]),
        "eval an attention pattern": (["eval", str(p["dict"]), "--hook", "blocks.0.attn.hook_pattern", *SMALL], ["[batch, pos, d_model]"]),
    }
    return cases


def _snapshot(root: Path) -> dict[str, str]:
    return {str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(root.rglob("*")) if path.is_file()}


def _debug_cases(out: Path) -> dict[str, tuple[list[str], dict[str, str]]]:
    """``{case: (argv, environment)}`` that must show the traceback."""
    return {
        "--debug": (["eval", str(out / "nothing"), "--debug"], {}),
        "ITDA_LENS_DEBUG=1": (["eval", str(out / "nothing")], {"ITDA_LENS_DEBUG": "1"}),
    }


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """Every case run once: ``{case: (argv, fragments, status, stderr, out)}`` (the
    debug cases without fragments), and the files of the workspace before and after."""
    root = tmp_path_factory.mktemp("workspace")
    paths = _workspace(root)
    outs = tmp_path_factory.mktemp("outs")
    logs = tmp_path_factory.mktemp("logs")
    cases = {name: (argv, fragments, {}) for name, (argv, fragments) in _cases(paths, outs).items()}
    cases.update({name: (argv, None, env) for name, (argv, env) in _debug_cases(outs).items()})
    before = _snapshot(root)
    runs = []
    for number, (argv, _, env) in enumerate(cases.values()):
        out = outs / f"case{number}"
        runs.append({
            "argv": [arg.replace("{out}", str(out)) for arg in argv], "cwd": str(outs), "env": env,
            "stdout": str(logs / f"{number}.out"), "stderr": str(logs / f"{number}.err"),
        })
    (logs / "cases.json").write_text(json.dumps(runs))
    command = [sys.executable, str(REPO / "tests" / "cli_processes.py"), str(logs / "cases.json"), str(logs / "status.json"), "2"]
    subprocess.run(command, env=_environment(), check=True, timeout=900)
    status = json.loads((logs / "status.json").read_text())
    results = {}
    for number, (name, (_, fragments, _)) in enumerate(cases.items()):
        stderr = Path(runs[number]["stderr"]).read_text()
        results[name] = (runs[number]["argv"], fragments, status[number], stderr, outs / f"case{number}")
    return results, before, _snapshot(root)


CASE_NAMES = list(_cases(dict.fromkeys(WORKSPACE, Path("/x")), Path("/x")))


@pytest.mark.parametrize("case", CASE_NAMES)
def test_bad_input_gets_one_clear_line(outcomes, case):
    argv, fragments, status, stderr, out = outcomes[0][case]
    assert "Traceback" not in stderr, stderr
    assert status == 2, (status, stderr)
    lines = error_lines(stderr)
    assert len(lines) == 1, lines
    assert "error:" in lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert not (out / ".checkpoint").exists()  # a failed run leaves no checkpoint to block the next


def test_bad_input_changes_no_file(outcomes):
    results, before, after = outcomes
    assert after == before
    tried = [results[name][3] for name in CASE_NAMES]
    tracebacks = sum("Traceback" in stderr for stderr in tried)
    print(f"\n{len(tried)} bad inputs tried through the command, {tracebacks} tracebacks, {len(before)} files unchanged")
    assert not tracebacks


@pytest.mark.parametrize("case", list(_debug_cases(Path("/x"))))
def test_debug_shows_the_traceback(outcomes, case):
    _, _, status, stderr, _ = outcomes[0][case]
    assert status == 1 and "Traceback" in stderr and "no dictionary folder" in stderr


def test_python_m_gives_what_the_forks_give(outcomes):
    argv, _, status, stderr, _ = outcomes[0]["train --out holds a dictionary"]
    result = run_cli(*argv)
    assert (result.returncode, result.stderr) == (status, stderr)


def test_ctrl_c_says_where_the_checkpoint_is(tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, "-m", "itda_lens.tools.cli", "train", "--hook", HOOK, "--out", str(out), "--max-tokens", "100000",
               "--seq-len", "32", "--batch-size", "2", "--k", "4", "--checkpoint-every", "1", "--no-progress"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_environment())
    state = out / ".checkpoint" / "state.json"
    try:
        while not state.exists() and process.poll() is None:
            time.sleep(0.02)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=300)
    finally:
        process.kill()
    assert process.returncode == 130 and "Traceback" not in stderr, stderr
    assert error_lines(stderr) == [f"error: the build was interrupted; its checkpoint is at {out / '.checkpoint'}: rerun the same command to resume."]
    assert json.loads(state.read_text())["state"]["batches"] >= 1
    assert sorted(path.name for path in out.iterdir()) == [".checkpoint"]
