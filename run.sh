#!/usr/bin/env bash
# Text prompt + face photo -> 3D Gaussian avatar, all stages in one command.
#
#   bash run.sh [--tiny] [--specular] [--gpus N] [--run-dir DIR] "<prompt>" <face image> [overrides...]
#   bash run.sh [--tiny] --from-stage 2|3 --run-dir DIR [overrides...]
#
#   --tiny          offline CPU preset: tiny random models (written on first use), 64² renders
#   --specular      view-dependent highlights (SpecularIP: SEID in stage 1, SCR in stage 3)
#   --gpus N        train stages 1 and 3 data-parallel on N GPUs of this machine (each step's views are
#                   split over them; N must divide the views per step: 1, 2 or 4 at paper settings)
#   --run-dir DIR   where the stages go (default: outputs/<prompt>@<time>): DIR/stage1 (AHDS),
#                   DIR/stage2 (view-consistent refinement), DIR/stage3 (reconstruction)
#   --from-stage N  restart from stage N, reusing the earlier stages in DIR (a rerun stage's old
#                   folder is kept as stageN.prev-<time>)
#   overrides       OmegaConf dotlist for every stage, e.g. system.max_gpu_memory_gb=22; prefix one
#                   with s1: / s2: / s3: to give it to that stage only, e.g. s1:trainer.max_steps=1200
#
# Works from any directory. Environment: PYTHON (default python3).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
py="${PYTHON:-python3}"
usage() { sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "error: $*" >&2; exit 2; }
tiny=0; from=1; run_dir=""; specular=0; gpus=1
while [[ $# -gt 0 && "$1" == --* ]]; do
  case "$1" in
    --tiny) tiny=1; shift ;;
    --specular) specular=1; shift ;;
    --gpus) [[ $# -ge 2 && "$2" =~ ^[1-9][0-9]*$ ]] || die "--gpus needs a number of GPUs (1 or more)"; gpus="$2"; shift 2 ;;
    --from-stage) [[ $# -ge 2 ]] || die "--from-stage needs 1, 2 or 3"; from="$2"; shift 2 ;;
    --run-dir) [[ $# -ge 2 ]] || die "--run-dir needs a folder"; run_dir="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown option $1" ;;
  esac
done
[[ "$from" =~ ^[123]$ ]] || die "--from-stage must be 1, 2 or 3, got $from"
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"
if [[ $from == 1 ]]; then
  [[ $# -ge 2 ]] || { usage >&2; die "need a prompt and a face image"; }
  prompt="$1"; face="$2"; shift 2
  [[ -n "${prompt//[[:space:]]/}" ]] || die "the text prompt is empty"
  [[ -f "$face" ]] || die "face image not found: $face"
  face="$(cd "$(dirname "$face")" && pwd)/$(basename "$face")"
  if [[ -z "$run_dir" ]]; then
    tag="$(printf '%s' "$prompt" | tr -cd '[:alnum:] ,._-' | tr ' ' '_' | cut -c1-80)"
    run_dir="outputs/${tag}@$(date +%Y%m%d-%H%M%S)"
  fi
else
  [[ -n "$run_dir" ]] || die "--from-stage $from needs --run-dir (the folder of the earlier run)"
  [[ -d "$run_dir/stage$((from - 1))" ]] || die "$run_dir/stage$((from - 1)) not found: run the earlier stages first"
fi
# absolute path without creating it: launch.py makes DIR/stageN only once a stage's checks passed,
# so a rejected input leaves no empty run folder behind
run_dir="$("$py" -c 'import os, sys; print(os.path.abspath(sys.argv[1]))' "$run_dir")"
[[ $tiny == 1 ]] && "$py" -m threestudio.tiny >/dev/null
cfgs() {  # the stage's config, its tiny preset, the specular preset (stages 1 and 3)
  local a=(--config "$here/configs/$1.yaml")
  [[ $tiny == 1 ]] && a+=(--config "$here/configs/tiny/$1.yaml")
  [[ $specular == 1 && $1 != refine ]] && a+=(--config "$here/configs/specular.yaml")
  printf '%s\n' "${a[@]}"
}
for o in "$@"; do [[ "$o" =~ ^s[0-9]+: && ! "$o" =~ ^s[123]: ]] && die "override $o: the stage prefix must be s1:, s2: or s3:"; done
[[ $gpus == 1 ]] || set -- "s1:trainer.devices=$gpus" "s3:trainer.devices=$gpus" "$@"  # stage 2 trains nothing
for_stage() {  # N overrides... -> the overrides for stage N (prefix s<N>: removed, other stages' dropped)
  local n="$1" o; shift
  for o in "$@"; do
    if [[ "$o" =~ ^s[123]: ]]; then [[ "${o:1:1}" == "$n" ]] && printf '%s\n' "${o:3}"; else printf '%s\n' "$o"; fi
  done
}
chain=()  # the launches, separated by --then: one Python process runs them one after another
stage() {  # stage N config [args...]
  local n="$1" name="$2"; shift 2
  mapfile -t c < <(cfgs "$name")
  chain+=(--then "${c[@]}" --banner "== stage $n/3: $name -> $run_dir/stage$n" --train "trial_dir=$run_dir/stage$n" "$@")
}
if [[ $from -le 1 ]]; then  # stage 2's overrides of stage 1's guidance and prompts, before stage 1 runs
  mapfile -t c < <(cfgs refine)
  mapfile -t o2 < <(for_stage 2 "$@")
  chain+=(--then "${c[@]}" --check "system.init_from=$run_dir/stage1" "${o2[@]}")
fi
if [[ $from -le 2 ]]; then  # stage 3's model files (LPIPS-VGG) are checked before hours of stages 1-2
  mapfile -t c < <(cfgs reconstruct)
  mapfile -t o3 < <(for_stage 3 "$@")
  chain+=(--then "${c[@]}" --check "system.init_from=$run_dir/stage2" "${o3[@]}")
fi
if [[ $from -le 1 ]]; then
  mapfile -t o < <(for_stage 1 "$@")
  stage 1 ahds "system.prompt_processor.prompt=$prompt" "system.face_image=$face" "${o[@]}"
fi
if [[ $from -le 2 ]]; then
  mapfile -t o < <(for_stage 2 "$@")
  stage 2 refine "system.init_from=$run_dir/stage1" "${o[@]}"
fi
mapfile -t o < <(for_stage 3 "$@")
stage 3 reconstruct "system.init_from=$run_dir/stage2" "${o[@]}"
if [[ $gpus == 1 ]]; then
  "$py" "$here/launch.py" "${chain[@]:1}"
else  # a data-parallel stage needs a launch.py process of its own (Lightning starts its ranks from it)
  seg=()
  for a in "${chain[@]:1}" --then; do
    if [[ "$a" == --then ]]; then "$py" "$here/launch.py" "${seg[@]}"; seg=(); else seg+=("$a"); fi
  done
fi
echo
echo "stage 1 (AHDS):           $run_dir/stage1/save/avatar.ply, turntable.mp4"
echo "stage 2 (refined views):  $run_dir/stage2/save/views/refined_*.png"
echo "stage 3 (final avatar):   $run_dir/stage3/save/avatar.ply"
echo "turntable:                $run_dir/stage3/save/turntable.mp4"
