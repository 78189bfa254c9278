#!/usr/bin/env bash
# The test command (README, .ci/run): installs the pinned CPU dependencies if missing, checks formatting
# and lint (ruff), then runs the CPU test suite on TEST_WORKERS (default 2) pytest-xdist workers. Extra
# arguments go to pytest. Nothing is downloaded from a model hub.
set -euo pipefail
cd "$(dirname "$0")/.."
py="${PYTHON:-python3}"
"$py" -m pip install -q --disable-pip-version-check torch==2.13.0 -r requirements.txt
"$py" -m pip install -q --disable-pip-version-check --no-deps -r requirements-nodeps.txt
# Debian's chromium for the headless web-viewer test (skipped if it cannot be installed)
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "warning: could not install chromium; the web-viewer test will be skipped" >&2
fi
# PlayCanvas's splat-transform (npm) reads our exports and builds the SuperSplat viewer page in the export tests
SPLAT_TRANSFORM_DIR="${GIP_CACHE_DIR:-$HOME/.cache/gaussianip}/npm"
if command -v npm >/dev/null 2>&1; then
  [ -x "$SPLAT_TRANSFORM_DIR/node_modules/.bin/splat-transform" ] || npm install --silent --no-audit --no-fund \
    --prefix "$SPLAT_TRANSFORM_DIR" @playcanvas/splat-transform@3.7.0 >/dev/null 2>&1 \
    || echo "notice: could not install splat-transform from npm; its export tests will be skipped" >&2
else
  echo "notice: npm not found; the splat-transform export tests will be skipped" >&2
fi
export SPLAT_TRANSFORM="$SPLAT_TRANSFORM_DIR/node_modules/.bin/splat-transform"
# format and lint (pyproject.toml), then build once what the test workers share: the tiny models and the
# anny body-template cache (so that two workers never build them at the same time)
"$py" -m ruff format --check --quiet .
"$py" -m ruff check --quiet .
"$py" -m threestudio.tiny >/dev/null
"$py" -c "from threestudio.models.body.anny_body import AnnyBody; AnnyBody({}).template()"
exec "$py" -m pytest -q -p no:cacheprovider -n "${TEST_WORKERS:-2}" --dist worksteal tests "$@"
