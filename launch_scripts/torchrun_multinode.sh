#!/usr/bin/env bash
# DiVE fine-tuning on several machines with torchrun.  Run this same command on every node.
#
#   # on each of 4 nodes with 8 GPUs, node 0 reachable as node0:
#   NNODES=4 NPROC_PER_NODE=8 MASTER_ADDR=node0 MASTER_PORT=29500 RDZV_ID=dive-run1 launch_scripts/torchrun_multinode.sh
#
# Rendezvous: c10d (elastic; node ranks are assigned by torchrun; the store lives on MASTER_ADDR) by default.
# Set NODE_RANK (0..NNODES-1) on every node to use the static rendezvous instead (node 0 must be MASTER_ADDR).
# Variables:
#   NNODES (required)  MASTER_ADDR (required)  MASTER_PORT (default 29500)  NPROC_PER_NODE (default: visible GPUs;
#   2 with DIVE_DEVICE=cpu)  RDZV_ID (default dive-$MASTER_ADDR-$MASTER_PORT; must be the same on all nodes)
#   RDZV_TIMEOUT (seconds to wait for all nodes to join, default 900)  NODE_RANK (static rendezvous)
# plus the DIVE_* settings of _dive_common.sh / README.md (defaults: the paper's recipe).  Set DIVE_NAME to the same
# value on every node (the default is derived from RDZV_ID), so that --resume latest finds the run.
set -euo pipefail
DIVE_LAUNCHER=torchrun_multinode.sh  # used by dive_die
# shellcheck source-path=SCRIPTDIR disable=SC2034
source "$(dirname "${BASH_SOURCE[0]}")/_dive_common.sh"

PY="${DIVE_PYTHON:-python}"
[ -n "${NNODES:-}" ] || dive_die "set NNODES (the number of machines); for one machine use launch_scripts/torchrun.sh"
[[ "$NNODES" =~ ^[1-9][0-9]*$ ]] || dive_die "NNODES must be a positive integer, got '$NNODES'"
[ -n "${MASTER_ADDR:-}" ] || dive_die "set MASTER_ADDR to the address of node 0 (the rendezvous host) on every node"
MASTER_PORT="${MASTER_PORT:-29500}"
if [ -z "${NPROC_PER_NODE:-}" ]; then
    if [ "${DIVE_DEVICE:-cuda}" = cpu ]; then
        NPROC_PER_NODE=2
    else
        NPROC_PER_NODE="$("$PY" -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0)"
        [ "$NPROC_PER_NODE" -gt 0 ] || dive_die "no GPU visible; set DIVE_DEVICE=cpu NPROC_PER_NODE=<n> for a CPU run"
    fi
fi
[[ "$NPROC_PER_NODE" =~ ^[1-9][0-9]*$ ]] || dive_die "NPROC_PER_NODE must be a positive integer, got '$NPROC_PER_NODE'"
RDZV_ID="${RDZV_ID:-dive-$MASTER_ADDR-$MASTER_PORT}"
export DIVE_RUN_ID="${DIVE_RUN_ID:-$RDZV_ID}"

if [ -n "${NODE_RANK:-}" ]; then
    if ! [[ "$NODE_RANK" =~ ^[0-9]+$ ]] || [ "$NODE_RANK" -ge "$NNODES" ]; then dive_die "NODE_RANK must be in 0..$((NNODES - 1)), got '$NODE_RANK'"; fi
    RDZV=(--rdzv-backend static --node-rank "$NODE_RANK" --master-addr "$MASTER_ADDR" --master-port "$MASTER_PORT")
else
    RDZV=(--rdzv-backend c10d --rdzv-endpoint "$MASTER_ADDR:$MASTER_PORT" --rdzv-id "$RDZV_ID"
          --rdzv-conf "join_timeout=${RDZV_TIMEOUT:-900}")
fi

# torchrun of the same interpreter (the `torchrun` on PATH may belong to another Python)
if [ -n "${DIVE_TORCHRUN:-}" ]; then read -r -a TORCHRUN <<<"$DIVE_TORCHRUN"; else TORCHRUN=("$PY" -m torch.distributed.run); fi
dive_build_args $(( NNODES * NPROC_PER_NODE ))
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
# shellcheck disable=SC2086
exec "${TORCHRUN[@]}" --nnodes "$NNODES" --nproc-per-node "$NPROC_PER_NODE" "${RDZV[@]}" ${DIVE_TORCHRUN_ARGS:-} \
    -m open_clip_dive.main "${DIVE_ARGS[@]}" "$@"
