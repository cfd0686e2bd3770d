#!/usr/bin/env bash
# mypy over model/, streamer/ and training/ as what they install as (crowdcount.model, ...).
# The editable install maps those names with an import hook that mypy cannot follow, so the
# check runs on a tree of links (build/typecheck/crowdcount/* -> the repo's folders) and the
# file names in its report are mapped back to the repository's. Settings: pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
farm=build/typecheck/crowdcount
mkdir -p "$farm"
for pkg in model streamer training web; do
    ln -sfn "../../../$pkg" "$farm/$pkg"
done
status=0
MYPYPATH=build/typecheck python -m mypy "$@" \
    -p crowdcount.model -p crowdcount.streamer -p crowdcount.training \
    | sed "s#^build/typecheck/crowdcount/##" || status=$?
exit "$status"
