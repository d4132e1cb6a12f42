#!/usr/bin/env bash
# One GPU session (about 9 minutes on one H200, 16 CPU cores) producing the GPU figures:
#   1. chunk latency on CUDA per preset: eager fp32 / bf16 / fp16, with and without CUDA graphs
#      (robopolicy bench inference), batch 1 and 16, DDPM-100 and DDIM-10;
#   2. image Diffusion Policy (the reference GPU preset, bf16 mixed precision) trained on Lift and
#      PickPlaceCan from freshly generated camera demos, time-boxed, then evaluated in simulation
#      (50 held-out seeds each, DDIM-10);
#   3. PickPlaceCan low-dim trained with the gripper scaled to 0.1 (RTI's scaled-gripper variant),
#      then DDPM-100 / DDIM-10 / RTI-2 / RTI-3 (gripper kept) on 50 held-out seeds.
# The machine is bare and offline: wheels (.whl), a robosuite trimmed to the assets Lift and
# PickPlaceCan use (.whl/robosuite_trim.tgz), GL loaders (.gl) and the Can low-dim store
# (.devdata/can.zarr) travel with the tree. Everything lands in $OUT/results.tgz; the scaled-gripper
# checkpoint in $OUT/can_g01.tar.part-*.
set -u
OUT=${OUT:?set OUT}
W=/tmp/gpu_session
mkdir -p $W/logs
T0=$(date +%s)
el() { echo $(($(date +%s) - T0)); }
log() { echo "[$(el)s] $*" | tee -a $W/logs/session.log; }
export PYTHONUNBUFFERED=1 MUJOCO_GL=egl TQDM_DISABLE=1

for f in .gl/*.deb; do dpkg -x "$f" / 2>/dev/null; done
ldconfig 2>/dev/null
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
  >$W/logs/pip.log 2>&1
tar xzf .whl/robosuite_trim.tgz -C /tmp/site
export PYTHONPATH=/tmp/site:$PWD
RP="python3 -m robopolicy"
log "setup done"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >$W/logs/gpu.txt 2>&1
python3 -c "import torch, robosuite, zarr, diffusers, mujoco; print(torch.__version__, torch.cuda.get_device_name(0), robosuite.__version__, mujoco.__version__)" \
  >>$W/logs/gpu.txt 2>&1
cat $W/logs/gpu.txt | tee -a $W/logs/session.log

# 2. image DP: demos -> train (time-boxed, after the latency runs) -> evaluate; Lift and Can side by side
image_task() { # task store-name suite train-config demos gen-workers train-minutes eval-workers
  local task=$1 name=$2 suite=$3 cfg=$4 demos=$5 gw=$6 minutes=$7 ew=$8
  timeout 125 $RP demos generate --task $task --episodes $demos --out $W/$name.zarr \
    --cameras agentview,robot0_eye_in_hand --workers $gw --no-progress >$W/logs/gen_$name.log 2>&1
  log "gen $name rc=$? $(tail -c 300 $W/logs/gen_$name.log | tr '\n' ' ')"
  while [ ! -f $W/bench_done ]; do sleep 2; done
  timeout $((minutes * 60 + 60)) $RP train --config $cfg --data $W/$name.zarr --out $W/run_$name --no-progress \
    num_steps=30000 time_limit_minutes=$minutes mixed_precision=bf16 eval_every=0 checkpoint_every=2000 \
    num_workers=4 >$W/logs/train_$name.log 2>&1
  log "train $name rc=$? $(tail -c 400 $W/logs/train_$name.log | tr '\n' ' ')"
  timeout 140 $RP eval --checkpoint $W/run_$name --suite $suite --episodes 50 --workers $ew --videos 0 --grid 0 \
    --sampler ddim --num-inference-steps 10 --no-progress --out $W/eval_$name >$W/logs/eval_$name.log 2>&1
  log "eval $name rc=$? $(tail -c 300 $W/logs/eval_$name.log | tr '\n' ' ')"
}
image_task Lift lift_img sim/lift_image.yaml configs/train/lift_image_gpu.yaml 60 5 3 5 &
LIFT=$!
image_task PickPlaceCan can_img sim/can_image.yaml configs/train/can_image_gpu.yaml 60 6 3 6 &
CAN=$!

# 1. latency, while only the demo generators (CPU) run: the GPU is otherwise idle
for preset in diffusion_unet_lowdim_small diffusion_unet_lowdim diffusion_transformer_lowdim; do
  timeout 28 $RP bench inference --preset $preset --device cuda --dtypes float32,bfloat16,float16 \
    --cuda-graph both --batch 1,16 --runs 10 --warmup 2 --json $W/bench_$preset.json >$W/logs/bench_$preset.log 2>&1
  log "bench $preset rc=$?"
done
for preset in diffusion_unet_image_small diffusion_unet_image; do
  timeout 25 $RP bench inference --preset $preset --cameras 2 --device cuda --dtypes float32,bfloat16 \
    --cuda-graph both --batch 1,16 --runs 10 --warmup 2 --json $W/bench_$preset.json >$W/logs/bench_$preset.log 2>&1
  log "bench $preset rc=$?"
done
uptime >>$W/logs/session.log
touch $W/bench_done

# 3. scaled-gripper Can low-dim: train (GPU) -> start level -> 4 rows x 50 seeds
(
  timeout 140 $RP train --config configs/train/can_lowdim.yaml --data .devdata/can.zarr --out $W/can_g01 \
    --no-progress policy.discrete_action_scale=0.1 device=cuda >$W/logs/train_can_g01.log 2>&1
  log "train can_g01 rc=$? $(tail -c 300 $W/logs/train_can_g01.log | tr '\n' ' ')"
  timeout 40 python3 benchmarks/bench_rti.py estimate --checkpoint $W/can_g01 --data .devdata/can.zarr \
    --out $W/rti_can_scaled_estimate.json >$W/logs/rti_can_scaled.log 2>&1
  log "estimate rc=$?"
  timeout 200 python3 benchmarks/bench_rti.py success --checkpoint $W/can_g01/latest --suite sim/can_lowdim.yaml \
    --workers 5 --gripper keep --start-t-from $W/rti_can_scaled_estimate.json \
    --out $W/rti_can_scaled.json >>$W/logs/rti_can_scaled.log 2>&1
  log "rti success rc=$?"
) &
G01=$!

wait $LIFT $CAN $G01
log "all done"
nvidia-smi >>$W/logs/gpu.txt 2>&1
cd $W
for d in run_lift_img run_can_img can_g01; do
  [ -d $d ] && cp $d/summary.json logs/summary_$d.json 2>/dev/null
  [ -d $d ] && cp $d/metrics.jsonl logs/metrics_$d.jsonl 2>/dev/null
done
for d in eval_lift_img eval_can_img; do [ -f $d/report.json ] && cp $d/report.json logs/report_$d.json; done
tar czf $OUT/results.tgz logs *.json 2>/dev/null
if [ -d can_g01/latest ]; then
  tar chf can_g01.tar -C can_g01 latest && split -b 15m can_g01.tar $OUT/can_g01.tar.part-
fi
ls -la $OUT
