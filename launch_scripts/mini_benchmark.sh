#!/usr/bin/env bash
# The mini benchmark on the embedded default (CPU, 2 cores): every registry method on every ID task, each weight
# selected on validation splits only, several seeds, WiSE-FT frontiers; writes docs/results/ (README.md, results
# .json / .csv, plots/, commands.sh, run.json). Extra arguments go to `python -m open_clip_dive.minibench`:
#   bash launch_scripts/mini_benchmark.sh --dry-run                      # what would run
#   bash launch_scripts/mini_benchmark.sh --only method=flyp,ce,dive     # one sitting of several (same WORK_DIR)
#   bash launch_scripts/mini_benchmark.sh --steps 80,digits=160          # the run length per task; runs of
#                                    another recipe are refused, not reused: remove WORK_DIR/digits/ to retrain it
# Runs are resumable: rerun the same command after a kill and finished runs are reused.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$REPO/.venv/bin/python}"
[ -x "$PY" ] || PY=python3
export HF_HUB_OFFLINE=1
cd "$REPO"
# two single-threaded runs side by side (--jobs 2 --threads 1): the runner sets OMP_NUM_THREADS per run
# (runs and logs: $WORK_DIR, default docs/results/work/, committed but for checkpoints; sittings that share it
# reuse each other's runs)
exec "$PY" -m open_clip_dive.minibench --output docs/results ${WORK_DIR:+--work-dir "$WORK_DIR"} --jobs 2 --threads 1 "$@"
