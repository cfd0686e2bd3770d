#!/usr/bin/env bash
# Run the counting service: create/refresh .venv if needed, then exec `crowdcount serve`.
# Arguments go to `crowdcount serve` (e.g. --config crowdcount.toml --port 8080).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh serve
exec .venv/bin/crowdcount serve "$@"
