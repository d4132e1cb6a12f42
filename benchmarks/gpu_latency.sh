#!/usr/bin/env bash
# GPU chunk latency alone on an idle machine (the first session's latency runs shared the CPU with
# demo generation and timed out): robopolicy bench inference per preset, CUDA, fp32 / bf16,
# with and without CUDA graphs, batch 1 and 16; plus the CUDA-graph equality test.
set -u
OUT=${OUT:?set OUT}
W=/tmp/gpu_latency; mkdir -p $W
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl >$W/pip.log 2>&1
export PYTHONPATH=/tmp/site:$PWD
RP="python3 -m robopolicy"
for preset in diffusion_unet_lowdim_small diffusion_unet_lowdim diffusion_transformer_lowdim; do
  timeout 45 $RP bench inference --preset $preset --device cuda --dtypes float32,bfloat16 --cuda-graph both \
    --batch 1,16 --runs 5 --warmup 1 --json $W/bench_$preset.json >$W/bench_$preset.log 2>&1
  echo "$preset rc=$?"
done
for preset in diffusion_unet_image_small diffusion_unet_image; do
  timeout 35 $RP bench inference --preset $preset --cameras 2 --device cuda --dtypes float32,bfloat16 \
    --cuda-graph both --batch 1,16 --runs 5 --warmup 1 --json $W/bench_$preset.json >$W/bench_$preset.log 2>&1
  echo "$preset rc=$?"
done
timeout 60 python3 -m pytest -q -p no:cacheprovider tests/inference/test_engine.py -k "graphed or cuda" >$W/pytest.log 2>&1
echo "pytest rc=$?"
timeout 30 python3 - >$W/transformer_graph.log 2>&1 <<'PY'
import traceback, torch
from robopolicy.inference.bench import preset_policy, fake_obs
p = preset_policy("diffusion_transformer_lowdim").to("cuda")
p.set_engine({"backend": "eager", "cuda_graph": True})
try:
    p.predict(fake_obs(p, 1), options={"sampler": "ddim", "num_inference_steps": 4})
except Exception:
    traceback.print_exc()
PY
tail -5 $W/transformer_graph.log
tar czf $OUT/latency.tgz -C $W .
