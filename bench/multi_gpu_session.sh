#!/usr/bin/env bash
# The multi-GPU measurements of the README ("More than one GPU") on a 4-GPU machine, in one go: stage 1 at
# the paper settings on 1 and 2 GPUs at the same time (GPU 0 | GPUs 1,2), then on 4 GPUs, then a gallery of
# 8 pairs on the 4 GPUs and one of those avatars alone. Needs torch with CUDA, requirements.txt + gsplat +
# dask-cuda (or the wheels in .whl/), OpenCV 4 (Haar cascades) and .bench/anny_template.npz
# (python -m threestudio.models.body.export anny .bench/anny_template.npz). Results go to $OUT (default bench_out/).
set -o pipefail
OUT="${OUT:-bench_out}"; mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" PYTHONUNBUFFERED=1 GIP_CACHE_DIR=/tmp/gipcache GIP_TINY_DIR=/tmp/tiny
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
python3 -m threestudio.tiny 2>&1 | tail -1
[ -f /tmp/sd15/VERSION ] || python3 -m threestudio.tiny --size sd15 --out /tmp/sd15
python3 -c "import sys; sys.path.insert(0, 'bench'); from full_pipeline import gsplat_build_seconds as g; print('gsplat build', g())"
M="--models /tmp/sd15 --tiny /tmp/tiny --template .bench/anny_template.npz --run-dir /tmp/multi_gpu"
CUDA_VISIBLE_DEVICES=0 python3 bench/multi_gpu.py stage1 --devices 1 --no-compile $M --out $OUT/multi_gpu_stage1_1gpu.json > $OUT/s1_1.log 2>&1 &
CUDA_VISIBLE_DEVICES=1,2 python3 bench/multi_gpu.py stage1 --devices 2 --no-compile $M --out $OUT/multi_gpu_stage1_2gpu.json > $OUT/s1_2.log 2>&1 &
wait
python3 bench/multi_gpu.py stage1 --devices 4 --no-compile $M --out $OUT/multi_gpu_stage1_4gpu.json > $OUT/s1_4.log 2>&1
python3 bench/multi_gpu.py summary $OUT/multi_gpu_stage1_*gpu.json --out $OUT/multi_gpu_stage1_scaling.json
SHORT="s1:trainer.max_steps=300 s3:trainer.max_steps=400 s1:system.guidance.compile_vae_encoder=false s1:system.guidance.compile_denoiser=false"
python3 bench/multi_gpu.py gallery --pairs 8 $M --out $OUT/multi_gpu_gallery_8pairs.json $SHORT > $OUT/gallery.log 2>&1
python3 bench/multi_gpu.py gallery --pairs 1 $M --run-dir /tmp/multi_gpu_alone --out $OUT/multi_gpu_gallery_1pair_alone.json $SHORT > $OUT/alone.log 2>&1
