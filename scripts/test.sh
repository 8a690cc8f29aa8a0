#!/usr/bin/env bash
# Set up a fresh machine and run the default test suite (what CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1
python -m pip install -q torch==2.14.1 torchvision==0.29.1
python -m pip install -q -e ".[test]"
# The original package (same import name) goes into its own folder; the equivalence tests and
# benchmarks import it in a subprocess with PYTHONPATH=.upstream.
[ -d .upstream/mit_semseg ] || python -m pip install -q --no-deps --target .upstream mit-semseg==1.0.0 \
    || echo "warning: could not install mit-semseg==1.0.0; equivalence tests will be skipped"
python -m ruff check mit_semseg tests benchmarks ./*.py
python -m pytest
