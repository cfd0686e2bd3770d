#!/usr/bin/env bash
# Create .venv and install the project. "$1" = "dev" installs training and test extras too;
# "serve" the serving install with the calibrate extra (Keras on PyTorch's CPU build, no
# TensorFlow).
# Versions come from constraints.txt (what the test suite last passed with; see the README's
# Tests section for updating it), so every machine installs the same set.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
. .venv/bin/activate
extras=""
[ "${1:-}" = "dev" ] && extras="[dev]"
[ "${1:-}" = "serve" ] && extras="[calibrate]"
stamp=".venv/.installed${extras}"

# Both extras calibrate on PyTorch, and PyPI's torch is the CUDA build (several GB that a CPU
# box never uses). So the CPU build of the version constraints.txt pins goes in first: from
# pip's own sources where they have it (a local wheel in find-links), else from PyTorch's CPU
# index. The extra's torch requirement then finds it installed.
install_torch_cpu() {
    local version
    version=$(sed -n 's/^torch==//p' constraints.txt)
    if python -c 'import sys, torch; sys.exit(torch.version.cuda is not None)' 2>/dev/null; then
        return
    fi
    python -m pip install -q -c constraints.txt "torch==${version}+cpu" 2>/dev/null \
        || python -m pip install -q -c constraints.txt "torch==${version}+cpu" \
            --extra-index-url https://download.pytorch.org/whl/cpu \
        || echo "setup-venv: no CPU build of torch ${version} was found; pip installs PyPI's" \
            "(CUDA) build, which also runs on a CPU" >&2
}
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ constraints.txt -nt "$stamp" ]; then
    python -m pip install -q --upgrade pip
    if [ -n "$extras" ]; then
        install_torch_cpu
    fi
    python -m pip install -q -c constraints.txt -e ".${extras}"
    touch "$stamp"
fi
