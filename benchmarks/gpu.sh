#!/usr/bin/env bash
# One GPU (prepared for a single H200): ViT-B/16 at the paper's batch 512, FLYP vs DiVE vs DiVE with the
# reference-embedding cache, for B' = B/4, B/2, B, in amp_bf16 then fp32 (TF32, as open_clip_train enables):
# step time against the floor, the frozen model's share, peak memory (CUDA max allocated; also with
# --grad-checkpointing and with the cache), then the data pipeline's images/s per loader worker at 224 px and the
# --workers / --dive-ref-workers the measured steps need. At most ~8 minutes; everything goes to one markdown file.
#
#   bash benchmarks/gpu.sh [OUTPUT.md]          # default: $OUT/gpu_results.md when $OUT is set, else ./gpu_results.md
#
# Settings (environment): PYTHON (default: the checkout's .venv/bin/python, else python3), DEVICE (cuda), MODEL (ViT-B-16), BATCH (512), PRECISIONS (amp_bf16,fp32), ROUNDS (4),
# STEPS (3 steps per turn), FRACTIONS (0.25,0.5,1), STEP_ARGS (more step_time.py flags), DATA_SAMPLES (512),
# DATA_BATCH (32), WORKERS (0,4,8), TOTAL_S (470: the whole script's limit; new work stops starting ~3 minutes
# before it). An out-of-memory configuration is reported as OOM and the rest goes on.
# Dry run of the same path on CPU with tiny settings:
#   DEVICE=cpu MODEL=tiny BATCH=8 ROUNDS=1 STEPS=1 PRECISIONS=fp32 DATA_SAMPLES=64 DATA_BATCH=8 WORKERS=0 \
#       bash benchmarks/gpu.sh /tmp/gpu_dry_run.md
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
out=${1:-${OUT:-.}/gpu_results.md}
DEVICE=${DEVICE:-cuda}
MODEL=${MODEL:-ViT-B-16}
BATCH=${BATCH:-512}
PRECISIONS=${PRECISIONS:-amp_bf16,fp32}
ROUNDS=${ROUNDS:-4}
STEPS=${STEPS:-3}
FRACTIONS=${FRACTIONS:-0.25,0.5,1}
STEP_ARGS=${STEP_ARGS:-}
DATA_SAMPLES=${DATA_SAMPLES:-512}
DATA_BATCH=${DATA_BATCH:-32}
WORKERS=${WORKERS:-0,4,8}
TOTAL_S=${TOTAL_S:-470}
# the interpreter: $PYTHON, else this checkout's .venv (scripts/setup.sh), else python3 (never a bare `python`)
venv_python="$here/../.venv/bin/python"
[ -x "$venv_python" ] || venv_python=python3
PYTHON=${PYTHON:-$venv_python}
export HF_HUB_OFFLINE=1
export PYTHONPATH="$here/..${PYTHONPATH:+:$PYTHONPATH}"

start=$(date +%s)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$(dirname "$out")"
elapsed() { echo $(( $(date +%s) - start )); }

{
  echo "# open_clip_dive GPU benchmark: $MODEL, B=$BATCH"
  echo
  echo "$(date -u +%FT%TZ); GPU: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null \
    | head -1 || echo none); settings: DEVICE=$DEVICE PRECISIONS=$PRECISIONS ROUNDS=$ROUNDS STEPS=$STEPS FRACTIONS=$FRACTIONS"
  echo
  echo "## Step time and memory (benchmarks/step_time.py)"
  echo
} > "$out"

# step time + memory: new work starts only within budget; the hard limit leaves ~90 s for the data benchmark
step_limit=$(( TOTAL_S - 90 ))
step_budget=$(( step_limit - 100 ))
timeout -k 10 "$step_limit" "$PYTHON" "$here/step_time.py" --device "$DEVICE" --models "$MODEL" \
  --batch-sizes "$MODEL=$BATCH" --precisions "$PRECISIONS" --ref-fractions "$FRACTIONS" --rounds "$ROUNDS" \
  --steps-per-turn "$STEPS" --budget-s "$step_budget" $STEP_ARGS --json "$tmp/step_time.json" --markdown "$tmp/step_time.md" \
  > /dev/null 2> "$tmp/step_time.log"
rc=$?
if [ -s "$tmp/step_time.md" ]; then cat "$tmp/step_time.md" >> "$out"; else echo "(no step-time output)" >> "$out"; fi
[ $rc -eq 0 ] || echo -e "\nstep_time.py exit status $rc (124: stopped at its time limit; the table above is what finished)" >> "$out"

# data pipeline: images/s per worker at 224 px, workers needed for the measured steps
left=$(( TOTAL_S - $(elapsed) - 5 ))
{
  echo
  echo "## Data pipeline (benchmarks/data_throughput.py)"
  echo
} >> "$out"
if [ "$left" -gt 30 ]; then
  json_arg=()
  [ -s "$tmp/step_time.json" ] && json_arg=(--step-time-json "$tmp/step_time.json")
  timeout -k 5 "$left" "$PYTHON" "$here/data_throughput.py" --samples "$DATA_SAMPLES" --batch-size "$DATA_BATCH" --workers "$WORKERS" \
    "${json_arg[@]}" --markdown "$tmp/data.md" > /dev/null 2> "$tmp/data.log"
  drc=$?
  if [ -s "$tmp/data.md" ]; then cat "$tmp/data.md" >> "$out"; else echo "(no data output; exit status $drc)" >> "$out"; fi
else
  echo "(skipped: ${left} s left)" >> "$out"
fi

{
  echo
  echo "## Log (last lines)"
  echo
  echo '```'
  tail -n 25 "$tmp/step_time.log" 2>/dev/null | grep -v "No pretrained weights"
  tail -n 5 "$tmp/data.log" 2>/dev/null
  echo '```'
  echo
  echo "Total: $(elapsed) s"
} >> "$out"
echo "$out"
