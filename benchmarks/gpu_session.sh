#!/usr/bin/env bash
# The GPU session of issue 13 in one script, for the device tool's `run` (benchmarks/README.md, "GPU session", has
# the exact calls). Prepare the carry first, here: bash benchmarks/gpu_prepare.sh.
#   0. stage and install: keep this call's part of the quickstart's archive (.gpu_carry/stageNN); the wheels of
#      .gpu_carry/base/wheels into /tmp (only where open_clip_train or webdataset is missing)
#   1. check:      benchmarks/gpu_check.py --device $DEVICE (CUDA against the CPU; exit 1 on a FAIL row)
#   2. quickstart: python -m open_clip_dive.quickstart --device $DEVICE, timed (model and data: the staged archive)
#   3. bench:      benchmarks/gpu.sh (ViT-B/16 at B=512: step time, memory, loader) with the time left
# Everything goes to $OUT (or the first argument): h200.md (the form of benchmarks/results/h200.md: machine,
# nvidia-smi, versions, each part's output as printed), gpu_check.md/.json, gpu.md, quickstart.md, session.log.
#
#   bash benchmarks/gpu_session.sh [OUTPUT_DIR]
#
# Settings (environment): DEVICE (cuda), PHASES (check,quickstart,bench), SESSION_S (575: the whole script; keep it
# under the run's timeout_s), CHECK_S (140), QUICKSTART_S (180), STAGE_ONLY=1 (only keep this call's part of the
# quickstart's archive in STAGE_DIR, default .gpu_stage, for the next call), PYTHON (default .venv/bin/python, else python3),
# QUICK=1 (a dry run's sizes: gpu_check --quick, the tiny quickstart, gpu.sh's tiny settings), and gpu.sh's own.
# Dry run on CPU:  DEVICE=cpu QUICK=1 bash benchmarks/gpu_session.sh /tmp/gpu_session_dry
set -uo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-${OUT:-$repo/gpu_session_out}}
DEVICE=${DEVICE:-cuda}
PHASES=${PHASES:-check,quickstart,bench}
SESSION_S=${SESSION_S:-575}
CHECK_S=${CHECK_S:-140}
QUICKSTART_S=${QUICKSTART_S:-180}
QUICK=${QUICK:-}
carry="$repo/.gpu_carry"
STAGE_DIR=${STAGE_DIR:-$repo/.gpu_stage}
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$repo/.venv/bin/python" ]; then PYTHON=$repo/.venv/bin/python; else PYTHON=$(command -v python3); fi
fi
export PYTHON DEVICE HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
start=$(date +%s)
left() { echo $(( SESSION_S - ($(date +%s) - start) )); }
min() { if [ "$1" -lt "$2" ]; then echo "$1"; else echo "$2"; fi; }
has() { case ",$PHASES," in *",$1,"*) return 0;; *) return 1;; esac; }
log() { echo "[gpu_session $(( $(date +%s) - start ))s] $*" | tee -a "$out/session.log" >&2; }
status=()  # one line per phase, for the summary
: > "$out/session.log"

# --- 0. stage and install ------------------------------------------------------------------------------------------
# the quickstart's archive comes in parts, one per call (benchmarks/gpu_prepare.sh): keep this call's part where the
# next call on the same (warm) machine finds it
manifest="$carry/base/cache.manifest"
staged=0; parts=0
if [ -f "$manifest" ] && { [ -n "${STAGE_ONLY:-}" ] || has quickstart; }; then
  mkdir -p "$STAGE_DIR"
  for part in "$carry"/stage*/cache.tgz.*; do [ -f "$part" ] && cp "$part" "$STAGE_DIR/"; done
  parts=$(grep -c "cache.tgz" "$manifest")
  staged=$(cd "$STAGE_DIR" && grep "cache.tgz" "$manifest" | sha256sum -c - 2>/dev/null | grep -c ": OK$")
fi
if [ -n "${STAGE_ONLY:-}" ]; then
  log "staged ${staged} of ${parts} parts of the quickstart's model and data in $STAGE_DIR"
  ls -la "$STAGE_DIR" >&2
  exit 0
fi
if ! "$PYTHON" -c "import open_clip_train, webdataset" 2>/dev/null; then
  site=/tmp/dive-site
  if ! ls "$carry"/base/wheels/*.whl >/dev/null 2>&1; then
    log "open_clip_train / webdataset missing and no wheels in $carry/base/wheels: run bash benchmarks/gpu_prepare.sh here first"
    exit 3
  fi
  log "installing $(ls "$carry"/base/wheels | tr '\n' ' ')into $site"
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
    "$carry"/base/wheels/*.whl >> "$out/session.log" 2>&1 || { log "pip install failed"; exit 3; }
  cp -r "$carry"/base/meta/*.dist-info "$site"/ 2>/dev/null
  export PYTHONPATH="$repo:$site${PYTHONPATH#"$repo"}"
fi
quickstart_cache=""
if [ "$parts" -gt 0 ] && [ "$staged" -eq "$parts" ]; then
  quickstart_cache=/tmp/dive-cache
  rm -rf "$quickstart_cache" && mkdir -p "$quickstart_cache"
  if cat "$STAGE_DIR"/cache.tgz.* | tar -xz -C "$quickstart_cache"; then
    log "unpacked the quickstart's $(head -1 "$manifest" | cut -d' ' -f2) model and data ($parts parts) into $quickstart_cache"
  else
    log "could not unpack the quickstart's archive"; quickstart_cache=""
  fi
elif [ "$parts" -gt 0 ]; then
  log "only ${staged} of ${parts} parts of the quickstart's model and data are staged (a STAGE_ONLY=1 call per stage folder)"
fi
"$PYTHON" -c "import open_clip, open_clip_train.main, webdataset, open_clip_dive.plugin" >> "$out/session.log" 2>&1 \
  || { log "the imports fail (see session.log)"; exit 3; }
log "python $PYTHON; PYTHONPATH=$PYTHONPATH; device $DEVICE; phases $PHASES; budget ${SESSION_S}s"

# --- machine ---------------------------------------------------------------------------------------------------
{
  echo "# open_clip_dive on one GPU: CUDA correctness, step time and memory, the quickstart (issue 13)"
  echo
  echo "Written by \`benchmarks/gpu_session.sh\` on $(date -u +%FT%TZ); commit: $(cat "$carry/base/COMMIT" 2>/dev/null \
    || git -C "$repo" rev-parse HEAD 2>/dev/null || echo unknown)."
  echo
  echo "## Machine"
  echo
  echo '```'
  if command -v nvidia-smi >/dev/null; then  # read only: the card's settings are left as they are
    nvidia-smi 2>&1
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv 2>&1
  else
    echo "nvidia-smi: not on this machine (device $DEVICE)"
  fi
  "$PYTHON" - <<'EOF'
import os, platform, sys
from importlib.metadata import version
import torch
print(f"Python {platform.python_version()} ({sys.executable}); torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"cuDNN {torch.backends.cudnn.version()}; " + ", ".join(f"{n} {version(n)}" for n in
      ("open_clip_torch", "timm", "webdataset", "transformers", "numpy", "pillow")))
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"GPU: {p.name}, {p.total_memory / 2**30:.1f} GiB, {p.multi_processor_count} SMs, capability "
          f"{p.major}.{p.minor}; bf16 {torch.cuda.is_bf16_supported()}")
print(f"CPU: {os.cpu_count()} logical cores; {platform.platform()}")
EOF
  echo '```'
} > "$work/machine.md" 2>&1

parts=()  # "TITLE|FILE" in the order of the issue
assemble() {  # h200.md from the parts so far: a run stopped at its limit still leaves what finished
  cp "$work/machine.md" "$out/h200.md"
  for part in "${parts[@]}"; do
    { echo; echo "## ${part%%|*}"; echo; if [ -s "${part#*|}" ]; then cat "${part#*|}"; else echo "(no output)"; fi; } \
      >> "$out/h200.md"
  done
  { echo; echo "## Session"; echo; printf -- '- %s\n' "${status[@]}"
    echo "- total: $(( $(date +%s) - start )) s of a ${SESSION_S} s budget"; } >> "$out/h200.md"
}

# --- 1. check --------------------------------------------------------------------------------------------------
if has check; then
  limit=$(min "$CHECK_S" "$(( $(left) - 30 ))")
  log "check: benchmarks/gpu_check.py --device $DEVICE (limit ${limit}s)"
  t0=$(date +%s)
  timeout -k 10 "$limit" "$PYTHON" "$repo/benchmarks/gpu_check.py" --device "$DEVICE" --out "$out" \
    ${QUICK:+--quick} > "$work/check.txt" 2>> "$out/session.log"
  rc=$?
  # gpu_check.py rewrites gpu_check.md after every section: a check stopped at its limit keeps what finished
  [ -s "$out/gpu_check.md" ] || cp "$work/check.txt" "$out/gpu_check.md"
  parts+=("1. CUDA correctness (benchmarks/gpu_check.py --device $DEVICE)|$out/gpu_check.md")
  status+=("check: exit $rc in $(( $(date +%s) - t0 )) s$([ $rc -eq 124 ] && echo ' (stopped at its time limit)')")
  log "${status[-1]}"
  assemble
fi

# --- 2. quickstart ---------------------------------------------------------------------------------------------
if has quickstart; then
  limit=$(min "$QUICKSTART_S" "$(( $(left) - 30 ))")
  if [ -z "$QUICK" ] && [ -z "$quickstart_cache" ]; then
    echo "(skipped: its model and data were not staged: ${staged} of ${parts} parts; see benchmarks/README.md)" \
      > "$work/quickstart.txt"
    status+=("quickstart: skipped (${staged} of ${parts} parts staged)")
  elif [ "$limit" -lt 30 ]; then
    echo "(skipped: ${limit} s left)" > "$work/quickstart.txt"
    status+=("quickstart: skipped (time)")
  else
    args=(--device "$DEVICE" --output "$work/quickstart")
    [ -n "$QUICK" ] && args+=(--tiny --steps 2 --batch-size 8)
    [ -n "$quickstart_cache" ] && export OPEN_CLIP_DIVE_CACHE="$quickstart_cache"
    [ "$(head -1 "$manifest" 2>/dev/null)" = "build tiny" ] && [ -z "$QUICK" ] && args+=(--tiny)
    log "quickstart: python -m open_clip_dive.quickstart ${args[*]} (limit ${limit}s)"
    t0=$(date +%s)
    (cd "$work" && timeout -k 10 "$limit" "$PYTHON" -m open_clip_dive.quickstart "${args[@]}") \
      > "$work/quickstart.log" 2>&1
    rc=$?
    seconds=$(( $(date +%s) - t0 ))
    {
      echo "\`python -m open_clip_dive.quickstart ${args[*]}\`: exit $rc, ${seconds} s wall clock (model and data"
      echo "prebuilt: ${quickstart_cache:-the local cache}; each training run and the evaluation is a subprocess, times from its log)."
      echo
      grep -E "^\[quickstart\]" "$work/quickstart.log"
      echo
      if [ -s "$work/quickstart/results/results.md" ]; then cat "$work/quickstart/results/results.md"; \
        cp "$work/quickstart/results/results.md" "$out/quickstart.md"; else tail -n 30 "$work/quickstart.log"; fi
    } > "$work/quickstart.txt"
    status+=("quickstart: exit $rc in ${seconds} s$([ $rc -eq 124 ] && echo ' (stopped at its time limit)')")
  fi
  parts+=("3. Quickstart on $DEVICE|$work/quickstart.txt")
  log "${status[-1]}"
  assemble
fi

# --- 3. bench --------------------------------------------------------------------------------------------------
if has bench; then
  total=$(( $(left) - 15 ))
  if [ "$total" -lt 120 ]; then
    echo "(skipped: ${total} s left)" > "$work/gpu.md"
    status+=("bench: skipped (time)")
  else
    if [ -n "$QUICK" ]; then  # the tiny settings of tests/test_benchmarks.py
      export MODEL=${MODEL:-tiny} BATCH=${BATCH:-4} ROUNDS=${ROUNDS:-1} STEPS=${STEPS:-1} PRECISIONS=${PRECISIONS:-fp32}
      export FRACTIONS=${FRACTIONS:-0.5,1} DATA_SAMPLES=${DATA_SAMPLES:-24} DATA_BATCH=${DATA_BATCH:-8} WORKERS=${WORKERS:-0}
      export STEP_ARGS=${STEP_ARGS:---memory-fractions 0.5 --no-memory-checkpointing --clock cpu}
    else
      export ROUNDS=${ROUNDS:-3}
    fi
    log "bench: benchmarks/gpu.sh with TOTAL_S=$total"
    t0=$(date +%s)
    TOTAL_S=$total bash "$repo/benchmarks/gpu.sh" "$work/gpu.md" >> "$out/session.log" 2>&1
    rc=$?
    cp "$work/gpu.md" "$out/gpu.md" 2>/dev/null
    status+=("bench: exit $rc in $(( $(date +%s) - t0 )) s")
  fi
  bench_part="2. Step time, memory and data pipeline (benchmarks/gpu.sh)|$work/gpu.md"
  if [ ${#parts[@]} -gt 0 ] && has check; then parts=("${parts[0]}" "$bench_part" "${parts[@]:1}"); \
  else parts=("$bench_part" "${parts[@]}"); fi
  log "${status[-1]}"
  assemble
fi

assemble
log "done: $out/h200.md"
tail -n 60 "$out/h200.md"
grep -q "^- check: exit 0" "$out/h200.md" || ! has check
