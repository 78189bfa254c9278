#!/usr/bin/env bash
# The test command (README, .ci/run): installs the pinned CPU dependencies if missing, then runs the
# CPU test suite. Extra arguments go to pytest. Nothing is downloaded from a model hub.
set -euo pipefail
cd "$(dirname "$0")/.."
py="${PYTHON:-python3}"
"$py" -m pip install -q --disable-pip-version-check torch==2.13.0 -r requirements.txt
"$py" -m pip install -q --disable-pip-version-check --no-deps -r requirements-nodeps.txt
exec "$py" -m pytest -q -p no:cacheprovider tests "$@"
