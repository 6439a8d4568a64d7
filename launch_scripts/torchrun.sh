#!/usr/bin/env bash
# DiVE fine-tuning on one machine with torchrun: one process per GPU (NCCL), or NPROC CPU processes (gloo).
#
#   DIVE_DATA_ROOT=/data launch_scripts/torchrun.sh                       # all GPUs of this machine
#   NPROC=4 launch_scripts/torchrun.sh --dive-ref-batch-size 256          # extra args go to the trainer
#   DIVE_DEVICE=cpu NPROC=2 launch_scripts/torchrun.sh --train-data ...   # CPU override (gloo)
#
# Variables: NPROC (default: number of visible GPUs; 2 with DIVE_DEVICE=cpu) and the DIVE_* settings documented in
# _dive_common.sh / README.md (defaults: the paper's ImageNet + CC3M recipe).  Set DIVE_NAME to resume a run: the
# trainer is always started with --resume latest.  torchrun itself: DIVE_TORCHRUN (default: $DIVE_PYTHON -m torch.distributed.run),
# DIVE_TORCHRUN_ARGS (extra torchrun options).  The log dir goes through --dive-logs: torchrun swallows --logs.
set -euo pipefail
DIVE_LAUNCHER=torchrun.sh  # used by dive_die
# shellcheck source-path=SCRIPTDIR disable=SC2034
source "$(dirname "${BASH_SOURCE[0]}")/_dive_common.sh"

PY="${DIVE_PYTHON:-python}"
if [ -z "${NPROC:-}" ]; then
    if [ "${DIVE_DEVICE:-cuda}" = cpu ]; then
        NPROC=2
    else
        NPROC="$("$PY" -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0)"
        [ "$NPROC" -gt 0 ] || dive_die "no GPU visible (torch.cuda.device_count() == 0); set DIVE_DEVICE=cpu NPROC=<n> for a CPU run"
    fi
fi
[[ "$NPROC" =~ ^[1-9][0-9]*$ ]] || dive_die "NPROC must be a positive integer, got '$NPROC'"

# torchrun of the same interpreter (the `torchrun` on PATH may belong to another Python)
if [ -n "${DIVE_TORCHRUN:-}" ]; then read -r -a TORCHRUN <<<"$DIVE_TORCHRUN"; else TORCHRUN=("$PY" -m torch.distributed.run); fi
dive_build_args "$NPROC"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
# shellcheck disable=SC2086
exec "${TORCHRUN[@]}" --standalone --nnodes 1 --nproc-per-node "$NPROC" ${DIVE_TORCHRUN_ARGS:-} \
    -m open_clip_dive.main "${DIVE_ARGS[@]}" "$@"
