#!/usr/bin/env bash
# The Label Studio round trip (a heavy test) for CI: creates the app venv and .venv-labelstudio when
# missing, then runs tests/bilaf/annotation/test_label_studio.py against a real Label Studio 1.23.2.
# Extra arguments go to pytest. Prints how long the set-up and the test took.
set -uo pipefail
cd "$(dirname "$0")/../../.."
started=$SECONDS
make --no-print-directory env label-studio-env || exit 1
echo "environments ready in $((SECONDS - started)) s"
started=$SECONDS
HF_HUB_OFFLINE=1 .venv/bin/python -m pytest tests/bilaf/annotation/test_label_studio.py -m heavy -q "$@"
status=$?
echo "Label Studio round trip: exit $status after $((SECONDS - started)) s"
exit "$status"
