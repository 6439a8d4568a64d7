#!/usr/bin/env bash
# DiVE fine-tuning with horovodrun (Gloo controller by default; one process per GPU, or NP CPU processes).
#
#   NP=16 HOSTS=node0:8,node1:8 DIVE_DATA_ROOT=/data launch_scripts/horovod.sh
#   DIVE_DEVICE=cpu NP=2 launch_scripts/horovod.sh --train-data ...        # CPU override, localhost
#
# Horovod 0.28.1 has no wheels and does not build against torch >= 2.1 as released: build it with
# scripts/build_horovod.sh (patches/horovod-0.28.1-torch2.14.patch).
# Variables: NP (default: visible GPUs, 2 with DIVE_DEVICE=cpu), HOSTS (default localhost:$NP), HOROVOD_CONTROLLER
# (gloo | mpi, default gloo), DIVE_HOROVODRUN (default: $DIVE_PYTHON -m horovod.runner.launch, i.e. horovodrun),
# DIVE_HOROVODRUN_ARGS (extra horovodrun options, e.g. "--network-interface eth0"),
# plus the DIVE_* settings of _dive_common.sh / README.md.  Set DIVE_NAME to resume a run (--resume latest).
set -euo pipefail
DIVE_LAUNCHER=horovod.sh  # used by dive_die
# shellcheck source-path=SCRIPTDIR disable=SC2034
source "$(dirname "${BASH_SOURCE[0]}")/_dive_common.sh"

PY="${DIVE_PYTHON:-python}"
if ! err="$("$PY" -c 'import horovod.torch' 2>&1)"; then
    dive_die "Horovod is requested but 'import horovod.torch' fails ($(echo "$err" | tail -n 1)); build it with scripts/build_horovod.sh"
fi
# horovodrun of the same interpreter (the `horovodrun` on PATH may belong to another Python)
if [ -n "${DIVE_HOROVODRUN:-}" ]; then
    read -r -a HOROVODRUN <<<"$DIVE_HOROVODRUN"
else
    HOROVODRUN=("$PY" -m horovod.runner.launch)
fi
if [ -z "${NP:-}" ]; then
    if [ "${DIVE_DEVICE:-cuda}" = cpu ]; then
        NP=2
    else
        NP="$("$PY" -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0)"
        [ "$NP" -gt 0 ] || dive_die "no GPU visible; set DIVE_DEVICE=cpu NP=<n> for a CPU run"
    fi
fi
[[ "$NP" =~ ^[1-9][0-9]*$ ]] || dive_die "NP must be a positive integer, got '$NP'"
case "${HOROVOD_CONTROLLER:-gloo}" in
    gloo) CONTROLLER=--gloo ;;
    mpi) CONTROLLER=--mpi ;;
    *) dive_die "HOROVOD_CONTROLLER must be gloo or mpi, got '$HOROVOD_CONTROLLER'" ;;
esac

dive_build_args "$NP"
# horovodrun, unlike torchrun, does not limit the threads per process; without this a CPU step is 10x slower.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
# shellcheck disable=SC2086
exec "${HOROVODRUN[@]}" -np "$NP" -H "${HOSTS:-localhost:$NP}" $CONTROLLER ${DIVE_HOROVODRUN_ARGS:-} \
    "$PY" -u -m open_clip_dive.main --horovod "${DIVE_ARGS[@]}" "$@"
