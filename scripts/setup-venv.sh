#!/usr/bin/env bash
# Create .venv and install the project. "$1" = "dev" installs training and test extras too;
# "serve" the serving install with the calibrate extra (Keras on JAX, no TensorFlow).
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
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ constraints.txt -nt "$stamp" ]; then
    python -m pip install -q --upgrade pip
    python -m pip install -q -c constraints.txt -e ".${extras}"
    touch "$stamp"
fi
