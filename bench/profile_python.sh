#!/usr/bin/env bash
# run.sh's $PYTHON for `bench/full_pipeline.py --profile DIR`: launch.py runs under bench/profile_launch.py
# (timeline + torch.profiler windows, written to $GIP_PROFILE_OUT); every other call is plain Python.
py="${PROFILE_PYTHON:-python3}"
if [[ "${1:-}" == */launch.py ]]; then exec "$py" "$(dirname "$0")/profile_launch.py" "$@"; fi
exec "$py" "$@"
