#!/usr/bin/env bash
# rlzoo on a CUDA GPU (device=cuda), in one short script for a lent GPU machine:
#   1. every recipe (conf/experiment) and every row of Paper A's table (conf/row) trains 2
#      iterations on shapes (the recipes on toy2d and on t2i's sd3_tiny with LoRA too, and a guided
#      bf16 t2i run), so a tensor left on the wrong device fails;
#   2. the default recipe on toy2d (its 200 iterations) and on shapes exactly as `make run` runs it
#      (its budget of 2 M model evaluations), with held-out evaluation;
#   3. `make bench` (python -m rlzoo.commands.bench) on the GPU;
#   4. `python -m rlzoo.commands.bench --gpu`: Paper A's recipe on SD3.5-Medium's transformer (random
#      weights, model=sd35m_random), per phase, images/s, peak memory, model FLOP utilisation,
#      eager and compiled (ONLY=4 runs this step alone);
#   5. the same on FLUX.1-dev's transformer (model=flux_random, 11.9 B) and Z-Image's
#      (model=z_image_random, 6.2 B; ONLY=5 runs these alone).
# Usage: scripts/gpu_check.sh [OUT_DIR]   (torch with CUDA, hydra-core, omegaconf and diffusers
# importable; on the lent GPU machine they travel as wheels, see README "On a GPU")
set -u   # no -e: one failing step should not hide the others
OUT=${1:-runs/gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 WANDB_MODE=offline
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}   # DEVICE=cpu dry-runs the script here
RUNS=$(mktemp -d)
FAST="eval.samples=96 eval.every=1000 checkpoint_every=1000 progress_bar=false"

$PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')" | tee "$OUT/device.txt"

if [ -z "${ONLY:-}" ]; then  # ONLY=4 or ONLY=5 runs that step alone
echo "== 1. every recipe and row, 2 iterations, device=$DEVICE (jobs in parallel)" | tee "$OUT/components.txt"
check() {  # task choice [overrides...]: 2 iterations, then ok or FAIL with the error's last lines
  local task=$1 choice=$2
  shift 2
  local dir="$RUNS/$task/${choice//[=+]/_}"
  mkdir -p "$RUNS/$task"
  if $PY -m rlzoo.commands.train device=$DEVICE task=$task "$choice" "$@" threads=2 train.iterations=2 train.max_minutes=null \
      $FAST run_dir="$dir" > "$dir.log" 2>&1; then echo "ok    $task $choice $*"
  else echo "FAIL  $task $choice $*: $(grep -v '^$' "$dir.log" | tail -2 | tr '\n' ' ')"; fi
}
for choice in experiment={paper_a,flowgrpo,flowgrpo_fast,diffusionnft,awm,dmd,gndm,dmdr,gndmr}; do
  check toy2d "$choice" > "$RUNS/toy2d_${choice//[=+]/_}.result" &
done
for choice in experiment={paper_a,flowgrpo,flowgrpo_fast,diffusionnft,awm,dmd,gndm,dmdr,gndmr} \
              +row={epg_traj_sde,epg_traj_sde_cfg,epg_elbo_sde,epg_elbo_ode,pepg_elbo_sde,pepg_elbo_ode,par_elbo_sde,par_elbo_ode,grpo_elbo_ode}; do
  check shapes "$choice" > "$RUNS/shapes_${choice//[=+]/_}.result" &
done
for choice in experiment={paper_a,flowgrpo,flowgrpo_fast,diffusionnft,awm}; do  # SD3 classes, LoRA, on the GPU
  check t2i "$choice" model=sd3_tiny reward.tiny=true sampler.num_steps=6 task.embedding_cache="$RUNS/emb" \
    > "$RUNS/t2i_${choice//[=+]/_}.result" &
done
for choice in experiment={dmd,dmdr}; do  # Paper B: the critic as a fourth LoRA adapter (random teacher: plumbing only)
  check t2i "$choice" model=sd3_tiny model.teacher=true reward.tiny=true task.embedding_cache="$RUNS/emb" \
    > "$RUNS/t2i_${choice//[=+]/_}.result" &
done
wait
check t2i sampler.cfg_scale=4.5 model=sd3_tiny reward.tiny=true model.precision=bf16 \
  model.gradient_checkpointing=true task.embedding_cache="$RUNS/emb" > "$RUNS/t2i_guided_bf16.result"
cat "$RUNS"/*.result | tee -a "$OUT/components.txt"

echo "== 2. default recipe, held-out evaluation" | tee "$OUT/training.txt"
SECONDS=0
$PY -m rlzoo.commands.train device=$DEVICE task=toy2d progress_bar=false \
  run_dir="$RUNS/default_toy2d" 2>&1 | tail -8 | tee -a "$OUT/training.txt"
echo "toy2d: $SECONDS s in all (start-up and evaluations included)" | tee -a "$OUT/training.txt"
SECONDS=0
$PY -m rlzoo.commands.train device=$DEVICE task=shapes progress_bar=false \
  train.max_minutes=null run_dir="$RUNS/default_shapes" 2>&1 | tail -14 | tee -a "$OUT/training.txt"
echo "shapes: $SECONDS s in all (start-up and evaluations included)" | tee -a "$OUT/training.txt"
cp "$RUNS/default_shapes/summary.json" "$OUT/shapes_summary.json"

echo "== 3. bench" | tee "$OUT/bench.txt"
$PY -m rlzoo.commands.bench device=$DEVICE --out "$RUNS/bench" 2>&1 | tee -a "$OUT/bench.txt"
cp "$RUNS/bench/estimators.json" "$OUT/bench.json"
fi

if [ -z "${ONLY:-}" ] || [ "${ONLY:-}" = 4 ]; then
echo "== 4. SD3.5-Medium's transformer (random weights, LoRA r 32, 512², bf16), eager and compiled" | tee "$OUT/bench_sd35m.txt"
# ONLY=4 scripts/gpu_check.sh runs this step alone (it fits one 10-minute call on an H100)
$PY -m rlzoo.commands.bench --gpu --iterations 3 device=$DEVICE task.embedding_cache="$RUNS/emb_sd35m" \
  --out "$RUNS/bench_sd35m" 2>&1 | tee -a "$OUT/bench_sd35m.txt"
cp "$RUNS/bench_sd35m/gpu.json" "$OUT/bench_sd35m.json" 2>/dev/null
fi

if [ -z "${ONLY:-}" ] || [ "${ONLY:-}" = 5 ]; then
echo "== 5. FLUX.1-dev's transformer (random weights, 11.9 B, LoRA r 32, 512², bf16), eager and compiled" \
  | tee "$OUT/bench_flux.txt"
# ONLY=5 scripts/gpu_check.sh runs this step alone
$PY -m rlzoo.commands.bench --gpu --model flux_random --iterations 3 device=$DEVICE \
  task.embedding_cache="$RUNS/emb_flux" --out "$RUNS/bench_flux" 2>&1 | tee -a "$OUT/bench_flux.txt"
cp "$RUNS/bench_flux/gpu.json" "$OUT/bench_flux.json" 2>/dev/null
echo "== 5b. Z-Image's transformer (random weights, 6.2 B, LoRA r 32, 512², bf16), eager and compiled" \
  | tee "$OUT/bench_z_image.txt"
$PY -m rlzoo.commands.bench --gpu --model z_image_random --iterations 3 device=$DEVICE \
  task.embedding_cache="$RUNS/emb_z_image" --out "$RUNS/bench_z_image" 2>&1 | tee -a "$OUT/bench_z_image.txt"
cp "$RUNS/bench_z_image/gpu.json" "$OUT/bench_z_image.json" 2>/dev/null
fi
