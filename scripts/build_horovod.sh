#!/usr/bin/env bash
# Build and install Horovod 0.28.1 (PyTorch + Gloo) against the torch that is installed in the current Python.
#
# Horovod's last PyPI release (0.28.1, 2023) has no wheels and its sdist does not build against torch >= 2.1.
# This script downloads the sdist from PyPI, applies patches/horovod-0.28.1-torch2.14.patch, builds a wheel
# into a cache directory keyed by the torch version and the patch hash, and installs it.  A second call with
# the same torch and patch reinstalls the cached wheel (seconds) or does nothing when horovod.torch already
# imports.
#
# usage: scripts/build_horovod.sh [--cache-dir DIR] [--force] [--no-install] [--python PY]
#   --cache-dir DIR  where the sdist and wheels are kept (default: $HOROVOD_WHEEL_CACHE or <repo>/.cache/wheels)
#   --force          rebuild even when a cached wheel exists / horovod already imports
#   --no-install     only build (or find) the wheel and print its path
#   --python PY      interpreter to build for (default: $PYTHON or python3)
# environment:
#   MAKEFLAGS        parallel build jobs (default -j<nproc>; setup.py would use -j8)
#   HOROVOD_PYTORCH_IGNORE_CUDA  1 (default when torch sees no GPU): CPU/Gloo-only extension even if nvcc exists.
#                    Set it to 0 and HOROVOD_GPU_OPERATIONS=NCCL on a GPU cluster (GPU build untested here).
#
# Exit status: 0 installed/built, 1 build failed (log path printed), 2 bad usage / prerequisites missing.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PATCH="$REPO/patches/horovod-0.28.1-torch2.14.patch"
VERSION=0.28.1
CACHE="${HOROVOD_WHEEL_CACHE:-$REPO/.cache/wheels}"
PY="${PYTHON:-python3}"
FORCE=0
INSTALL=1

while [ $# -gt 0 ]; do
    case "$1" in
        --cache-dir) CACHE="$2"; shift 2 ;;
        --force) FORCE=1; shift ;;
        --no-install) INSTALL=0; shift ;;
        --python) PY="$2"; shift 2 ;;
        -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
        *) echo "build_horovod.sh: unknown argument: $1" >&2; exit 2 ;;
    esac
done

log() { echo "[build_horovod] $*" >&2; }

for tool in cmake g++ patch; do
    command -v "$tool" >/dev/null || { log "error: '$tool' is required (apt-get install cmake g++ patch)"; exit 2; }
done
TORCH_VERSION="$("$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null)" \
    || { log "error: torch is not importable with $PY; install torch first"; exit 2; }
PYTAG="$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')"
PATCH_HASH="$(sha256sum "$PATCH" | cut -c1-12)"
KEY="torch-${TORCH_VERSION//+/_}-${PYTAG}-patch-${PATCH_HASH}"
WHEEL_DIR="$CACHE/horovod-$VERSION/$KEY"
mkdir -p "$WHEEL_DIR" "$CACHE/sdist"

if [ "$INSTALL" = 1 ] && [ "$FORCE" = 0 ] && (cd /tmp && "$PY" -c 'import horovod, horovod.torch, sys; sys.exit(horovod.__version__ != "'"$VERSION"'")') 2>/dev/null; then
    log "horovod $VERSION already installed and horovod.torch imports with torch $TORCH_VERSION; nothing to do"
    exit 0
fi

wheel="$(ls "$WHEEL_DIR"/horovod-$VERSION-*.whl 2>/dev/null | head -n1 || true)"
if [ -z "$wheel" ] || [ "$FORCE" = 1 ]; then
    rm -f "$WHEEL_DIR"/horovod-*.whl
    sdist="$CACHE/sdist/horovod-$VERSION.tar.gz"
    if [ ! -f "$sdist" ]; then
        log "downloading the horovod==$VERSION sdist from PyPI"
        "$PY" -m pip download "horovod==$VERSION" --no-deps --no-binary :all: -d "$CACHE/sdist" >&2
    fi
    BUILD="$(mktemp -d "${TMPDIR:-/tmp}/horovod-build.XXXXXX")"
    trap 'rm -rf "$BUILD"' EXIT
    tar xzf "$sdist" -C "$BUILD"
    SRC="$BUILD/horovod-$VERSION"
    log "applying $(basename "$PATCH")"
    patch -d "$SRC" -p1 --forward --quiet < "$PATCH"

    if [ -z "${HOROVOD_PYTORCH_IGNORE_CUDA:-}" ]; then
        if "$PY" -c 'import torch, sys; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
            HOROVOD_PYTORCH_IGNORE_CUDA=0
        else
            HOROVOD_PYTORCH_IGNORE_CUDA=1
        fi
    fi
    export HOROVOD_PYTORCH_IGNORE_CUDA
    # A legacy setup.py build without isolation needs setuptools and, before setuptools 70.1, the wheel package.
    if ! "$PY" -c 'import setuptools, wheel' 2>/dev/null; then
        log "installing setuptools/wheel into $PY for the build"
        "$PY" -m pip install -q setuptools wheel >&2
    fi
    export HOROVOD_WITH_PYTORCH=1 HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1 HOROVOD_WITH_GLOO=1
    export HOROVOD_WITHOUT_MPI="${HOROVOD_WITHOUT_MPI:-1}"
    export MAKEFLAGS="${MAKEFLAGS:--j$(nproc)}"
    LOGFILE="$CACHE/horovod-$VERSION/build-$KEY.log"
    log "building the wheel for torch $TORCH_VERSION ($PYTAG, MAKEFLAGS=$MAKEFLAGS, IGNORE_CUDA=$HOROVOD_PYTORCH_IGNORE_CUDA); log: $LOGFILE"
    start=$(date +%s)
    # --no-build-isolation: the build must see the installed torch (the isolated env has none).
    if ! (cd "$SRC" && "$PY" -m pip wheel -v --no-deps --no-build-isolation . -w "$WHEEL_DIR") >"$LOGFILE" 2>&1; then
        log "error: the horovod build failed; last lines of $LOGFILE:"
        tail -n 30 "$LOGFILE" >&2
        exit 1
    fi
    log "built in $(( $(date +%s) - start )) s"
    wheel="$(ls "$WHEEL_DIR"/horovod-$VERSION-*.whl | head -n1)"
else
    log "using the cached wheel $wheel"
fi

if [ "$INSTALL" = 1 ]; then
    "$PY" -m pip install --force-reinstall --no-deps "$wheel" >&2
    # horovod's runtime dependencies (cloudpickle, psutil, pyyaml, packaging, cffi), without touching torch.
    "$PY" -m pip install cloudpickle psutil pyyaml packaging cffi >&2
    (cd /tmp && "$PY" -c 'import horovod.torch as hvd; print("[build_horovod] horovod", __import__("horovod").__version__, "gloo built:", hvd.gloo_built())') >&2
fi
echo "$wheel"
