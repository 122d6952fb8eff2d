"""Run many ``itda-lens`` command lines, each in its own process, cheaply.

``python tests/cli_processes.py CASES.json RESULTS.json WORKERS`` imports what the
command imports (torch, transformers and TransformerLens: seconds) once, then forks one process per case that
runs ``itda_lens.tools.cli`` as ``__main__`` exactly as ``python -m itda_lens.tools.cli ARGS`` does,
in the case's folder, with its stdout and stderr in files. ``CASES.json`` is a list of
``{"argv": [...], "cwd": "...", "stdout": "...", "stderr": "...", "env": {...}}`` (``env``
added to the environment); ``RESULTS.json``
gets the exit status of each, in order. At most ``WORKERS`` run at a time. Nothing has
run a torch operation before the forks, so each process starts with fresh threads.
"""

from __future__ import annotations

import json
import os
import runpy
import sys
import traceback

import transformer_lens.model_bridge  # noqa: F401  (what the command imports, once for all cases)
import transformers  # noqa: F401

import itda_lens.backends.models  # noqa: F401
import itda_lens.tools.browse.cli  # noqa: F401
import itda_lens.tools.compare.cli  # noqa: F401


def _child(case: dict) -> int:
    """Run one case in this (forked) process; returns its exit status."""
    for fd, path in ((1, case["stdout"]), (2, case["stderr"])):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
    os.chdir(case["cwd"])
    os.environ.update(case.get("env", {}))
    sys.argv = ["itda-lens", *case["argv"]]
    try:
        runpy.run_module("itda_lens.tools.cli", run_name="__main__", alter_sys=True)
    except SystemExit as exit:
        if exit.code is None or isinstance(exit.code, int):
            return exit.code or 0
        print(exit.code, file=sys.stderr)
        return 1
    except BaseException:  # as the interpreter does: the traceback, status 1
        traceback.print_exc()
        return 1
    return 0


def main(cases_path: str, results_path: str, workers: int) -> None:
    cases = json.loads(open(cases_path).read())
    status: list[int | None] = [None] * len(cases)
    running: dict[int, int] = {}
    for number, case in enumerate(cases):
        while len(running) >= workers:
            pid, wait = os.wait()
            status[running.pop(pid)] = os.waitstatus_to_exitcode(wait)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = _child(case)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        running[pid] = number
    while running:
        pid, wait = os.wait()
        status[running.pop(pid)] = os.waitstatus_to_exitcode(wait)
    with open(results_path, "w") as f:
        json.dump(status, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
