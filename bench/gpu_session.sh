#!/usr/bin/env bash
# All GPU checks and benchmarks in one go (a CUDA machine with torch; other packages from
# requirements.txt + gsplat, or as wheels in .whl/). Results (JSON, logs) go to $OUT (default bench_out/).
set -o pipefail
OUT="${OUT:-bench_out}"; mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"
export PYTHONUNBUFFERED=1 GIP_CACHE_DIR=/tmp/gipcache GIP_TINY_DIR=/tmp/tiny GIP_TEMPLATE=$PWD/.bench/anny_template.npz
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee $OUT/gpu.txt
python3 -c "import torch, diffusers, gsplat, transformers, peft, omegaconf; print(torch.__version__, diffusers.__version__, gsplat.__version__, transformers.__version__, peft.__version__)" | tee -a $OUT/gpu.txt
python3 -m threestudio.tiny 2>&1 | tail -1
(time python3 -m pytest -q -p no:cacheprovider -m gpu tests 2>&1) 2>&1 | tail -15 | tee $OUT/pytest_gpu.txt
python3 bench/rasterizer_agreement.py --template .bench/anny_template.npz --points 20000 --size 256 --out $OUT/raster.json 2>&1 | tail -30
(time python3 -m threestudio.tiny --size sd15 --out /tmp/sd15) 2>&1 | tail -4
python3 bench/stage1_step.py --models /tmp/sd15 --template .bench/anny_template.npz --steps 4 --breakdown --out $OUT/stage1.json 2>&1 | grep -v Warning | tail -40
python3 bench/sdpa_backends.py --out $OUT/sdpa_backends.json 2>&1 | tail -40
# animation: body only, then body + facial expression (needs an AMASS SMPL-X motion: cp ../shared/data/motions/amass_test_17.npz .bench/)
python3 bench/animation_fps.py --template .bench/anny_template.npz --motion "${MOTION:-.bench/amass_test_17.npz}" --out $OUT/animation.json 2>&1 | tail -30
# stages 2 and 3
python3 bench/reconstruction.py --template .bench/anny_template.npz --out $OUT/reconstruction.json 2>&1 | tail -60
python3 bench/refine_views.py --models /tmp/sd15 --template .bench/anny_template.npz --out $OUT/refine.json 2>&1 | grep -v "Warning\|warn\|Loading weights\|should be kept\|LoRA keys\|image_encoder is not" | tail -30
python3 bench/specular.py --template .bench/anny_template.npz --out $OUT/specular.json 2>&1 | tail -40
# the whole pipeline (run.sh at paper settings, 5-7 min each on an H200): under a 24 GB-card budget, then uncapped.
# Needs a portrait in .bench/ (cp ../shared/data/faces/man.png .bench/) and OpenCV 4 (Haar cascades).
for cap in 22 0; do
  python3 bench/full_pipeline.py --gsplat-build --models /tmp/sd15 --tiny /tmp/tiny --template .bench/anny_template.npz \
    --face "${FACE:-.bench/man.png}" --cap-gb $cap --out $OUT/full_pipeline_cap$cap.json 2>&1 | tail -60
done
