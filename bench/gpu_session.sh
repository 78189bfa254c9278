#!/usr/bin/env bash
# GPU checks and benchmarks in one go (a CUDA machine with torch; other packages from requirements.txt +
# gsplat, or as wheels in .whl/: besides the README's packages the full pipeline needs OpenCV 4 for the Haar
# face cascades and lpips==0.1.4 for its LPIPS heads; the GPU tests need beartype). Results (JSON, logs) go to
# $OUT (default bench_out/).
#
#   PARTS="tests step pipeline" bash bench/gpu_session.sh   # only these parts, in this script's order
#
# Parts: tests raster step streams sdpa animation reconstruction refine specular pipeline profile (default: all but
# profile, a diagnostic run of the pipeline under torch.profiler windows whose times are not the pipeline's). The
# issue-12 speed figures in a 30-minute lease: PARTS="step refine pipeline tests" CAPS=22 (with
# ALLOC_CONFS="default expandable_segments:True", two pipeline runs: the allocator A/B).
set -o pipefail
OUT="${OUT:-bench_out}"; mkdir -p "$OUT"
PARTS="${PARTS:-tests raster step streams sdpa animation reconstruction refine specular pipeline}"
want() { [[ " $PARTS " == *" $1 "* ]]; }
T=.bench/anny_template.npz  # python -m threestudio.models.body.export anny .bench/anny_template.npz (on the CPU machine)
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"
export PYTHONUNBUFFERED=1 GIP_CACHE_DIR=/tmp/gipcache GIP_TINY_DIR=/tmp/tiny GIP_TEMPLATE=$PWD/$T
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee $OUT/gpu.txt
python3 -c "import torch, diffusers, gsplat, transformers, peft, omegaconf; print(torch.__version__, diffusers.__version__, gsplat.__version__, transformers.__version__, peft.__version__)" | tee -a $OUT/gpu.txt
python3 -m threestudio.tiny 2>&1 | tail -1
if want step || want streams || want refine || want pipeline; then
  (time python3 -m threestudio.tiny --size sd15 --out /tmp/sd15) 2>&1 | tail -4
fi
if want tests; then (time python3 -m pytest -q -p no:cacheprovider -m gpu tests 2>&1) 2>&1 | tail -15 | tee $OUT/pytest_gpu.txt; fi
if want raster; then
  python3 bench/rasterizer_agreement.py --template $T --points 20000 --size 256 --out $OUT/raster.json 2>&1 | tail -30
fi
if want step; then  # ours beside the naive reference (fp16, eager diffusers) in one process; the first run compiles
  python3 bench/stage1_step.py --models /tmp/sd15 --template $T --steps 25 --warmup-steps 12 --breakdown \
    --variants ours_bf16 reference_fp16 --out $OUT/stage1.json 2>&1 | grep -v Warning | tail -40
fi
if want streams; then  # the ControlNet beside the UNet's encoder half against one stream (controlnet_stream)
  python3 bench/denoiser_streams.py --models /tmp/sd15 --rows 8,12 --stage2-rows 16 --out $OUT/denoiser_streams.json 2>&1 | tail -30
fi
if want sdpa; then python3 bench/sdpa_backends.py --out $OUT/sdpa_backends.json 2>&1 | tail -40; fi
# animation: body only, then body + facial expression (needs an AMASS SMPL-X motion: cp ../shared/data/motions/amass_test_17.npz .bench/)
if want animation; then
  python3 bench/animation_fps.py --template $T --motion "${MOTION:-.bench/amass_test_17.npz}" --out $OUT/animation.json 2>&1 | tail -30
fi
if want reconstruction; then python3 bench/reconstruction.py --template $T --out $OUT/reconstruction.json 2>&1 | tail -60; fi
if want refine; then
  python3 bench/refine_views.py --models /tmp/sd15 --template $T --variants two_streams,channels_last,cudnn_benchmark --repeats 1 \
    --out $OUT/refine.json 2>&1 | grep -v "Warning\|warn\|Loading weights\|should be kept\|LoRA keys\|image_encoder is not" | tail -30
fi
if want specular; then python3 bench/specular.py --template $T --out $OUT/specular.json 2>&1 | tail -40; fi
# the whole pipeline (run.sh at paper settings, 4-5 min each): under a 24 GB-card budget, then uncapped (CAPS).
# Needs a portrait in .bench/ (cp ../shared/data/faces/man.png .bench/).
if want profile; then  # where each stage's GPU time goes (summaries in the JSON; traces in $OUT/profile)
  python3 bench/full_pipeline.py --models /tmp/sd15 --tiny /tmp/tiny --template $T --face "${FACE:-.bench/man.png}" \
    --cap-gb 22 --profile $OUT/profile --out $OUT/pipeline_profile.json 2>&1 | tail -20
fi
# ALLOC_CONFS: the CUDA caching allocator's settings to run each cap with, one run each ("default" = unset), e.g.
# ALLOC_CONFS="default expandable_segments:True" (each stage's manifest records the allocator's retries and frees).
if want pipeline; then
  build=--gsplat-build  # gsplat's one-time build is timed in the first run only
  for cap in ${CAPS:-22 0}; do
    for conf in ${ALLOC_CONFS:-default}; do
      if [ "$conf" = default ]; then name=cap$cap; else name=cap${cap}_${conf//[^A-Za-z0-9]/_}; fi
      ( [ "$conf" = default ] || export PYTORCH_CUDA_ALLOC_CONF=$conf
        python3 bench/full_pipeline.py $build --models /tmp/sd15 --tiny /tmp/tiny --template $T \
          --face "${FACE:-.bench/man.png}" --cap-gb $cap --out $OUT/full_pipeline_$name.json 2>&1 | tail -60 )
      build=
    done
  done
fi
