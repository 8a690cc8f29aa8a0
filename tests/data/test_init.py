"""mit_semseg.data: the package's lazy public names and its command-line modules."""

import subprocess
import sys
from pathlib import Path

import pytest

import mit_semseg.data

PACKAGE_DIR = Path(mit_semseg.data.__file__).parent
# every module of the package that can be run with ``python -m``
CLI_MODULES = sorted(
    f"mit_semseg.data.{path.stem}"
    for path in PACKAGE_DIR.glob("*.py")
    if 'if __name__ == "__main__":' in path.read_text(encoding="utf-8")
)


def test_cli_modules_are_found():
    assert "mit_semseg.data.odgt" in CLI_MODULES


@pytest.mark.parametrize("module", CLI_MODULES)
def test_python_m_runs_without_runpy_warning(module):
    # the package importing the module before runpy executes it as __main__ made runpy warn
    proc = subprocess.run(
        [sys.executable, "-W", "error::RuntimeWarning", "-m", module, "--help"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "RuntimeWarning" not in proc.stderr
    assert proc.stdout.startswith("usage: python -m " + module)


def test_every_public_name_resolves_to_its_module():
    for name in mit_semseg.data.__all__:
        value = getattr(mit_semseg.data, name)
        assert value.__module__.startswith("mit_semseg.data."), name
        assert name in dir(mit_semseg.data)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        mit_semseg.data.nope  # noqa: B018
