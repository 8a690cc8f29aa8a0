#!/usr/bin/env bash
# Set up a fresh machine and run the default test suite (what CI runs): lint, then pytest.
#
#   bash scripts/test.sh                # the default suite
#   bash scripts/test.sh -m slow        # extra arguments go to pytest
#
# Outside a virtual environment it creates .venv/ in the clone and installs there (see
# scripts/python_env.sh); inside one it installs into that one. PYTHON picks the interpreter,
# TORCH_INDEX_URL the index PyTorch comes from (e.g. https://download.pytorch.org/whl/cpu).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/python_env.sh

choose_python
install_project "[test,onnx,app,int8]"  # onnx: the export tests; app: the web page's tests; int8: MODEL.precision int8
# The original package (same import name) goes into its own folder; the equivalence tests and
# benchmarks import it in a subprocess with PYTHONPATH=.upstream.
[ -d .upstream/mit_semseg ] || "$PY" -m pip install -q --no-deps --target .upstream mit-semseg==1.0.0 \
    || echo "warning: could not install mit-semseg==1.0.0; equivalence tests will be skipped"
"$PY" -m ruff check mit_semseg tests benchmarks scripts ./*.py
# One pytest worker per core (pytest-xdist, at most 4): faster than one process on 2 cores,
# measured in the README's Quick start (scripts/measure_quickstart.py --serial-tests); -n 0
# runs serially. --dist loadgroup keeps tests marked xdist_group together in one worker.
"$PY" -m pytest -n auto --maxprocesses 4 --dist loadgroup "$@"
