"""Size and shape of the package's code: lines, files, the longest function, the widest signature.

    python scripts/code_stats.py                   # this checkout's mit_semseg/
    python scripts/code_stats.py --rev d15ebb1     # the package as it was at a commit

Lines are physical lines of the ``.py`` files; a function's length runs from its ``def`` to its
last line (docstring included); a signature's width is its number of parameters (``self`` and
``cls`` not counted).
"""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def package_sources(rev: str | None) -> dict[str, str]:
    """``path -> text`` of every ``mit_semseg/**.py``, from the working tree or a commit."""
    if rev is None:
        return {p.relative_to(ROOT).as_posix(): p.read_text(encoding="utf-8")
                for p in sorted((ROOT / "mit_semseg").rglob("*.py"))}
    names = subprocess.run(["git", "ls-tree", "-r", "--name-only", rev, "mit_semseg"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    return {name: subprocess.run(["git", "show", f"{rev}:{name}"], cwd=ROOT, capture_output=True,
                                 text=True, check=True).stdout
            for name in names if name.endswith(".py")}


def stats(sources: dict[str, str]) -> dict[str, object]:
    longest = (0, "")
    widest = (0, "")
    for path, text in sources.items():
        for node in ast.walk(ast.parse(text)):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            where = f"{path}:{node.lineno} {node.name}"
            length = node.end_lineno - node.lineno + 1
            args = node.args
            params = [*args.posonlyargs, *args.args, *args.kwonlyargs]
            width = len([a for a in params if a.arg not in ("self", "cls")])
            width += bool(args.vararg) + bool(args.kwarg)
            longest = max(longest, (length, where))
            widest = max(widest, (width, where))
    return {
        "files": len(sources),
        "lines": sum(text.count("\n") for text in sources.values()),
        "longest function": f"{longest[0]} lines ({longest[1]})",
        "widest signature": f"{widest[0]} parameters ({widest[1]})",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rev", default=None, help="a git commit (default: the working tree)")
    args = parser.parse_args(argv)
    for key, value in stats(package_sources(args.rev)).items():
        print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
