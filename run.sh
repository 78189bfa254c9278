#!/usr/bin/env bash
# Text prompt + face photo -> 3D Gaussian avatar.
#
#   bash run.sh [--tiny] "<prompt>" <face image> [overrides...]
#
#   --tiny      offline CPU preset: tiny random models (written on first use), 64² renders.
#   overrides   OmegaConf dotlist, e.g. trainer.max_steps=1200 exp_root_dir=/data/runs
#
# Runs the pipeline stages that exist (stage 1, AHDS) from any working directory and prints where
# the results are. Environment: PYTHON (default python3).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
py="${PYTHON:-python3}"
usage() { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; }
tiny=0
while [[ $# -gt 0 && "$1" == --* ]]; do
  case "$1" in
    --tiny) tiny=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "error: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
done
if [[ $# -lt 2 ]]; then echo "error: need a prompt and a face image" >&2; usage >&2; exit 2; fi
prompt="$1"; face="$2"; shift 2
if [[ -z "${prompt//[[:space:]]/}" ]]; then echo "error: the text prompt is empty" >&2; exit 2; fi
if [[ ! -f "$face" ]]; then echo "error: face image not found: $face" >&2; exit 2; fi
face="$(cd "$(dirname "$face")" && pwd)/$(basename "$face")"
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"
configs=(--config "$here/configs/ahds.yaml")
if [[ $tiny == 1 ]]; then
  "$py" -m threestudio.tiny >/dev/null
  configs+=(--config "$here/configs/tiny/ahds.yaml")
fi
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
echo "stage 1/1: AHDS score distillation"
"$py" "$here/launch.py" "${configs[@]}" --train \
  "system.prompt_processor.prompt=$prompt" "system.face_image=$face" "$@" 2>&1 | tee "$log"
trial="$(sed -n 's/^results in //p' "$log" | tail -n 1)"
echo
echo "avatar:    $trial/save/avatar.ply"
echo "turntable: $trial/save/turntable.mp4"
echo "config:    $trial/configs/parsed.yaml"
echo "checkpoint: $trial/ckpts/last.ckpt"
