#!/usr/bin/env bash
# Set up everything the test suite needs (system packages, a virtual environment with the
# project and its dev extras) and run ruff, the type checker and the whole test suite.
# Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-system-deps.sh
bash scripts/setup-venv.sh dev
. .venv/bin/activate
ruff check .
bash scripts/typecheck.sh
python -m pytest "$@"
