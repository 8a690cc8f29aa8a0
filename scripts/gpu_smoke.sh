#!/usr/bin/env bash
# GPU smoke test: every CUDA path of mit_semseg once on a lent GPU (under 8 minutes on one
# GPU), results in one file, OUT_DIR/gpu_smoke_results.md (full output: OUT_DIR/gpu_smoke.log).
# The checks are listed in scripts/gpu_smoke.py.
#
#   bash scripts/gpu_smoke.sh [--out DIR] [--budget SECONDS] [--only CHECK...]
#   bash scripts/gpu_smoke.sh --dry          # describe the machine and the plan, run nothing
#   bash scripts/gpu_smoke.sh --fetch-deps   # where pip works: fill .gpu_deps/ and .upstream/
#
# The GPU machine has no internet. Prepare once where pip works (--fetch-deps: the pure-Python
# wheels of the packages its image may lack into .gpu_deps/, the original 1.0.0 into
# .upstream/), then carry both along, e.g. with the device tool:
#   run(command="bash scripts/gpu_smoke.sh --out $OUT", carry=[".gpu_deps", ".upstream"],
#       timeout_s=540)
#
# It uses the first of $PYTHON, .venv/bin/python, python3, /opt/torch/.venv/bin/python3,
# python that imports torch (GPU_SMOKE_PYTHONS="a b ..." replaces that list), and reports
# which. Missing packages are installed from .gpu_deps/ (or, if an index is reachable, from
# it) into a private folder, never into that Python's environment.
#
# Exit status: 0 every check that ran passed; 1 a check failed; 2 no usable Python (none with
# torch, or packages missing); 77 no CUDA device (nothing was run).
set -uo pipefail
cd "$(dirname "$0")/.."

OUT_DIR=${OUT:-gpu_smoke_out}
FETCH=0
DRIVER_ARGS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --out) OUT_DIR=$2; shift 2 ;;
        --fetch-deps) FETCH=1; shift ;;
        *) DRIVER_ARGS+=("$1"); shift ;;
    esac
done
mkdir -p "$OUT_DIR"
RESULTS="$OUT_DIR/gpu_smoke_results.md"
DEPS_DIR=.gpu_deps
# import name -> pip name of what mit_semseg (and the original, for the speed check) import
MODULES="yacs:yacs cv2:opencv-python-headless numpy:numpy tqdm:tqdm matplotlib:matplotlib PIL:pillow yaml:pyyaml pytest:pytest pytest_timeout:pytest-timeout"

fail_setup() {  # message -> results file + stderr, exit 2
    printf '# GPU smoke test (`bash scripts/gpu_smoke.sh`)\n\nNot run: %s\n' "$1" >"$RESULTS"
    echo "gpu_smoke: $1" >&2
    exit 2
}

PY=""
tried=()
for candidate in ${GPU_SMOKE_PYTHONS:-${PYTHON:-} .venv/bin/python python3 /opt/torch/.venv/bin/python3 python}; do
    if ! command -v "$candidate" >/dev/null 2>&1; then
        tried+=("$candidate (not found)")
    elif "$candidate" -c "import torch" >/dev/null 2>&1; then
        PY=$candidate
        break
    else
        tried+=("$candidate (no torch)")
    fi
done
[ -n "$PY" ] || fail_setup "no Python with torch found; tried: ${tried[*]}"
echo "gpu_smoke: using $PY ($("$PY" -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__)'))"

missing_modules() {  # prints the pip names of the modules $PY cannot import
    "$PY" - "$MODULES" <<'EOF'
import importlib.util, sys
def present(module):
    try:
        return importlib.util.find_spec(module) is not None
    except Exception:  # a broken install counts as missing
        return False
pairs = [item.split(":") for item in sys.argv[1].split()]
print(" ".join(pip for module, pip in pairs if not present(module)))
EOF
}

if [ "$FETCH" = 1 ]; then
    # pure-Python wheels run on any interpreter; the others come with the GPU machine's image
    "$PY" -m pip download -q --no-deps --only-binary=:all: -d "$DEPS_DIR" yacs pytest-timeout \
        || fail_setup "pip download of yacs and pytest-timeout failed"
    if [ ! -f .upstream/mit_semseg/dataset.py ]; then
        "$PY" -m pip install -q --no-deps --target .upstream mit-semseg==1.0.0 \
            || fail_setup "pip install of mit-semseg==1.0.0 into .upstream/ failed"
    fi
    echo "gpu_smoke: $DEPS_DIR/ ($(ls "$DEPS_DIR" | tr '\n' ' ')) and .upstream/ are ready to carry"
    exit 0
fi

MISSING=$(missing_modules)
if [ -n "$MISSING" ]; then
    SITE=$(mktemp -d /tmp/gpu_smoke_site.XXXXXX)
    trap 'rm -rf "$SITE"' EXIT
    echo "gpu_smoke: $PY lacks: $MISSING; installing into $SITE"
    if compgen -G "$DEPS_DIR/*.whl" >/dev/null; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" \
            "$DEPS_DIR"/*.whl || true
    fi
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
    STILL=$(missing_modules)
    if [ -n "$STILL" ]; then  # a package index may be reachable
        timeout 120 "$PY" -m pip install -q --no-deps --target "$SITE" $STILL >/dev/null 2>&1 || true
        STILL=$(missing_modules)
    fi
    [ -z "$STILL" ] || fail_setup "$PY lacks the packages: $STILL (run \`bash scripts/gpu_smoke.sh --fetch-deps\` where pip works and carry .gpu_deps/)"
fi
if [ ! -f .upstream/mit_semseg/dataset.py ]; then
    echo "gpu_smoke: the original 1.0.0 is not in .upstream/; trying pip (needs an index)"
    timeout 120 "$PY" -m pip install -q --no-deps --target .upstream mit-semseg==1.0.0 >/dev/null 2>&1 \
        || echo "gpu_smoke: not installed: the speed comparison will be skipped"
fi

"$PY" scripts/gpu_smoke.py --out "$OUT_DIR" "${DRIVER_ARGS[@]}"
status=$?
echo "gpu_smoke: exit $status; results in $RESULTS"
exit $status
