"""scripts/code_stats.py: the numbers the closing notes quote."""

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "code_stats.py"
sys.path.insert(0, str(SCRIPT.parent))

import code_stats  # noqa: E402


def test_counts_lines_files_longest_function_and_widest_signature():
    sources = {
        "a.py": "def f(x, y, *args, z=1, **kw):\n    return x\n",
        "b.py": "class C:\n    def m(self, a):\n        b = a\n        c = b\n        return c\n",
    }
    result = code_stats.stats(sources)
    assert result["files"] == 2 and result["lines"] == 7
    assert result["longest function"] == "4 lines (b.py:2 m)"
    assert result["widest signature"] == "5 parameters (a.py:1 f)"


def test_runs_on_the_working_tree():
    out = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True,
                         check=True).stdout
    assert out.startswith("files: ") and "widest signature: " in out
