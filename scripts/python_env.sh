# Sourced by scripts/demo.sh and scripts/test.sh (from the clone's root): chooses the Python
# interpreter they use (sets PY) and installs PyTorch and the package into its environment.
#
# The interpreter is $PYTHON if set, else python3, else python. When it already runs inside a
# virtual environment (an activated venv, virtualenv or conda env) it is used as it is. Any other
# interpreter (the system's python3, a pyenv or Homebrew one) is only used to create .venv/ in
# the clone, and .venv/bin/python is used from then on: nothing is ever installed into the
# system Python, which recent Debian/Ubuntu refuse anyway (PEP 668, externally-managed-environment).

export PIP_DISABLE_PIP_VERSION_CHECK=1
# The PyTorch releases the project is tested with (CPU and CUDA builds share these wheels):
# 2.14.1 on Python 3.10+, and on 3.9, which PyTorch 2.9 dropped, its last release for 3.9.
TORCH_REQUIREMENTS=(torch==2.14.1 torchvision==0.29.1)
TORCH_REQUIREMENTS_PY39=(torch==2.8.0 torchvision==0.23.0)

python_env_fail() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

# Sets PY to the interpreter to use, creating .venv/ when needed, and says which it is.
choose_python() {
    local base=${PYTHON:-}
    if [ -z "$base" ]; then
        if command -v python3 >/dev/null 2>&1; then
            base=python3
        elif command -v python >/dev/null 2>&1; then
            base=python
        else
            python_env_fail "no python3 on PATH; install Python 3.9 or newer (3.10+ for PyTorch 2.14) or set PYTHON=/path/to/python3"
        fi
    fi
    command -v "$base" >/dev/null 2>&1 || python_env_fail "PYTHON=$base: no such interpreter"
    # prints "<in an environment: 1|0> <version> <sys.executable>"
    local probe
    probe=$("$base" -c 'import os, sys
in_env = sys.prefix != sys.base_prefix or os.path.isdir(os.path.join(sys.prefix, "conda-meta"))
print(int(in_env), "%d.%d" % sys.version_info[:2], sys.executable)') \
        || python_env_fail "$base does not run"
    local in_env version executable
    read -r in_env version executable <<<"$probe"
    "$base" -c 'import sys; sys.exit(sys.version_info < (3, 9))' \
        || python_env_fail "$base is Python $version; mit_semseg needs Python 3.9 or newer (set PYTHON=...)"
    if [ "$in_env" = 1 ]; then
        PY=$executable
        echo "Using the active Python environment: $PY (Python $version)"
        return
    fi
    if [ -e .venv ] && ! [ -x .venv/bin/python ]; then
        python_env_fail ".venv exists but has no bin/python; remove it (rm -rf .venv) and retry"
    fi
    if [ -x .venv/bin/python ]; then
        local venv_version
        venv_version=$(.venv/bin/python -c 'import sys; print("%d.%d" % sys.version_info[:2])') \
            || python_env_fail ".venv/bin/python does not run (moved clone?); remove .venv and retry"
        if [ -n "${PYTHON:-}" ] && [ "$venv_version" != "$version" ]; then
            python_env_fail ".venv has Python $venv_version but PYTHON=$PYTHON is $version; \
remove .venv (rm -rf .venv) to recreate it with $PYTHON"
        fi
        echo "Using the virtual environment .venv/ (Python $venv_version)"
    else
        echo "Not inside a virtual environment: creating one in .venv/ with $executable (Python $version)"
        if ! "$base" -m venv .venv; then
            rm -rf .venv  # half-made (no pip), it would be taken for a working one next time
            python_env_fail "could not create .venv with $executable; on Debian/Ubuntu install \
the venv module first (sudo apt install python3-venv), or set PYTHON=..."
        fi
    fi
    PY=$PWD/.venv/bin/python
    echo "  (to use it yourself: source .venv/bin/activate)"
}

# install_project [EXTRAS]: PyTorch and this clone (editable, with the given extras, e.g. "[test]")
# into $PY's environment; quick when everything is already there.
#
# On Linux, PyPI only has PyTorch's CUDA build (with about 4 GB of NVIDIA libraries, used on
# no CPU-only machine). TORCH_INDEX_URL, when set, is the package index that PyTorch and
# torchvision (and their dependencies) are installed from, e.g. PyTorch's CPU-only index
# https://download.pytorch.org/whl/cpu or a mirror of it; everything else comes from pip's
# usual index (PIP_INDEX_URL and pip's other settings apply to every install here, as pip
# reads them itself). It only chooses the build when PyTorch is not installed yet.
install_project() {
    local torch
    read -r -a torch <<<"$(torch_requirements)"
    if [ -n "${TORCH_INDEX_URL:-}" ]; then
        echo "Installing ${torch[*]} from TORCH_INDEX_URL=$TORCH_INDEX_URL"
        "$PY" -m pip install -q --index-url "$TORCH_INDEX_URL" "${torch[@]}"
        "$PY" -m pip install -q -e ".${1:-}"
    else
        "$PY" -m pip install -q "${torch[@]}" -e ".${1:-}"
    fi
}

# Prints the PyTorch requirements for $PY's Python version.
torch_requirements() {
    if "$PY" -c 'import sys; sys.exit(sys.version_info >= (3, 10))'; then
        echo "${TORCH_REQUIREMENTS_PY39[*]}"
    else
        echo "${TORCH_REQUIREMENTS[*]}"
    fi
}
