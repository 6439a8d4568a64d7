#!/usr/bin/env bash
# The mini benchmark on the embedded default (CPU: 17 trainings, 158 min on a shared 2-core machine): every
# registry method (FLYP, AVL, PVL, DiVE, SnD, replay), plain and with WiSE-FT; the AVL/PVL weight is selected on
# validation splits only.
# Writes docs/results/ (results.md / .csv / .json, plots/, commands.sh, run.json). Extra arguments go to
# `python -m open_clip_dive.minibench` (e.g. --steps 100).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$REPO/.venv/bin/python}"
[ -x "$PY" ] || PY=python3
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
cd "$REPO"
exec "$PY" -m open_clip_dive.minibench --output docs/results --work-dir "${WORK_DIR:-/tmp/open_clip_dive-minibench}" "$@"
