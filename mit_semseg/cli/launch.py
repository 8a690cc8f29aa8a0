"""The entry points of the commands (``train.py``, ..., ``mit-semseg-train``, ...).

Starting a command takes seconds, most of them importing torch. A Ctrl-C then would end it
with Python's traceback of the import (some 65 lines) and death by the signal. So each entry
point here imports its program (:mod:`mit_semseg.cli.train`, ...) only when called, inside a
guard that turns that interrupt into one line, ``prog: interrupted while starting ...``, and
exit status 130, what the programs answer to SIGINT later on. An interrupt that escapes a
program's own handling gets the same treatment. Under torchrun, where a Ctrl-C reaches every
worker, only rank 0 prints the line. This module imports nothing heavy, so that the guard
stands before torch starts loading.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys

__all__ = ["eval", "eval_multipro", "export", "interrupted", "program_name", "test", "train"]

EXIT_INTERRUPTED = 128 + signal.SIGINT


def program_name(script: str) -> str:
    """The name the user typed: the console command (``mit-semseg-train``) when the script was
    started as one, else ``script`` (``train.py``)."""
    invoked = os.path.splitext(os.path.basename(sys.argv[0] if sys.argv else ""))[0]
    return invoked if invoked.startswith("mit-semseg-") else script


def interrupted(prog: str, what: str = "") -> int:
    """Report a Ctrl-C as ``prog: interrupted<what>`` (rank 0 of a torchrun job only, from its
    ``RANK``); return the exit status, 130."""
    if os.environ.get("RANK", "0") == "0":
        print(f"{prog}: interrupted{what}", file=sys.stderr)
    return EXIT_INTERRUPTED


def _run(command: str, script: str, argv: list[str] | None) -> int:
    """``mit_semseg.cli.<command>.main(argv)``, its import included, under the Ctrl-C guard."""
    prog = program_name(script) if argv is None else script
    try:
        # imported here, not at the top: the import is what the guard is for
        program = importlib.import_module(f"mit_semseg.cli.{command}")
    except KeyboardInterrupt:
        return interrupted(prog, " while starting; nothing was done")
    try:
        return program.main(argv)
    except KeyboardInterrupt:
        return interrupted(prog)


def train(argv: list[str] | None = None) -> int:
    """``train.py``: see :mod:`mit_semseg.cli.train`."""
    return _run("train", "train.py", argv)


def eval(argv: list[str] | None = None) -> int:
    """``eval.py``: see :mod:`mit_semseg.cli.eval`."""
    return _run("eval", "eval.py", argv)


def eval_multipro(argv: list[str] | None = None) -> int:
    """``eval_multipro.py``: see :mod:`mit_semseg.cli.eval_multipro`."""
    return _run("eval_multipro", "eval_multipro.py", argv)


def test(argv: list[str] | None = None) -> int:
    """``test.py``: see :mod:`mit_semseg.cli.test`."""
    return _run("test", "test.py", argv)


def export(argv: list[str] | None = None) -> int:
    """``mit-semseg-export``: see :mod:`mit_semseg.cli.export`."""
    return _run("export", "mit-semseg-export", argv)
