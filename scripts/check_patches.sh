#!/usr/bin/env bash
# Check that every patch in patches/ applies cleanly (no fuzz, no offset) to the pinned upstream release, and
# leave the patched sources behind for tests.
#
#   patches/horovod-0.28.1-torch2.14.patch     -> the horovod==0.28.1 sdist from PyPI
#   patches/open_clip-3.3.0-dive-hooks.patch   -> the open_clip_torch==3.3.0 wheel from PyPI (open_clip_train/),
#                                                 and a git checkout layout (src/open_clip_train) via git apply
#
# usage: scripts/check_patches.sh [--out DIR] [--test [PYTEST ARGS...]]
#   --out DIR   keep the patched trees in DIR (default: a temporary dir, removed at exit unless --test/--out)
#               DIR/open_clip-site/open_clip_train is the patched package: put DIR/open_clip-site first on
#               PYTHONPATH to use it instead of the installed one.
#   --test      then run the plugin's distributed tests against the patched open_clip_train
#               (DIVE_TEST_OPEN_CLIP_PATH=DIR/open_clip-site; default test files: test_patches, test_launch_torchrun,
#               test_horovod, test_slurm, test_train, test_preemption; extra args go to pytest)
# environment: PYTHON (default python3), DIVE_PATCH_CACHE (downloads; default <repo>/.cache/patch-sources)
# Exit status: 0 all patches apply (and tests pass), 1 a patch does not apply cleanly / tests fail, 2 usage/download.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
CACHE="${DIVE_PATCH_CACHE:-$REPO/.cache/patch-sources}"
OUT=""
TEST=0
PYTEST_ARGS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --out) OUT="$2"; shift 2 ;;
        --test) TEST=1; shift; PYTEST_ARGS=("$@"); break ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        *) echo "check_patches.sh: unknown argument: $1" >&2; exit 2 ;;
    esac
done
log() { echo "[check_patches] $*" >&2; }
fail() { echo "[check_patches] FAIL: $*" >&2; exit 1; }

if [ -z "$OUT" ]; then
    OUT="$(mktemp -d "${TMPDIR:-/tmp}/dive-patches.XXXXXX")"
    [ "$TEST" = 1 ] || trap 'rm -rf "$OUT"' EXIT
fi
mkdir -p "$OUT" "$CACHE"
OUT="$(cd "$OUT" && pwd)"

fetch() {  # fetch SPEC PATTERN [pip options...] -> path of the downloaded file in the cache
    local spec="$1" pattern="$2"
    shift 2
    local found
    found="$(find "$CACHE" -maxdepth 1 -name "$pattern" | head -n 1)"
    if [ -z "$found" ]; then
        log "downloading $spec from PyPI"
        "$PY" -m pip download "$spec" --no-deps "$@" -d "$CACHE" >&2 || { log "error: pip download $spec failed"; exit 2; }
        found="$(find "$CACHE" -maxdepth 1 -name "$pattern" | head -n 1)"
    fi
    [ -n "$found" ] || { log "error: $spec: no file matching $pattern after download"; exit 2; }
    echo "$found"
}

apply_clean() {  # apply_clean DIR PATCH: dry run first; any fuzz, offset or reject is a failure
    local dir="$1" patchfile="$2" report
    if ! report="$(patch -d "$dir" -p1 --dry-run --fuzz=0 --forward < "$patchfile" 2>&1)"; then
        fail "$(basename "$patchfile") does not apply to $(basename "$dir"):"$'\n'"$report"
    fi
    if grep -qiE 'offset|fuzz|hunk .* failed|reversed' <<<"$report"; then
        fail "$(basename "$patchfile") applies only with offsets/fuzz to $(basename "$dir") (regenerate it):"$'\n'"$report"
    fi
    patch -d "$dir" -p1 --fuzz=0 --forward --quiet < "$patchfile"
}

# --- horovod ---------------------------------------------------------------------------------------------
HVD_PATCH="$REPO/patches/horovod-0.28.1-torch2.14.patch"
# reuse the sdist that scripts/build_horovod.sh cached, if any
HVD_SDIST="$(find "$REPO/.cache/wheels/sdist" -maxdepth 1 -name 'horovod-0.28.1.tar.gz' 2>/dev/null | head -n 1 || true)"
[ -n "$HVD_SDIST" ] || HVD_SDIST="$(fetch horovod==0.28.1 'horovod-0.28.1.tar.gz' --no-binary :all:)"
rm -rf "$OUT/horovod-0.28.1"
tar xzf "$HVD_SDIST" -C "$OUT"
apply_clean "$OUT/horovod-0.28.1" "$HVD_PATCH"
grep -q 'HOROVOD_PYTORCH_IGNORE_CUDA' "$OUT/horovod-0.28.1/cmake/Modules/FindPytorch.cmake" || fail "horovod patch content missing"
log "ok: $(basename "$HVD_PATCH") applies cleanly to horovod-0.28.1 (sdist)"

# --- open_clip ---------------------------------------------------------------------------------------------
OC_PATCH="$REPO/patches/open_clip-3.3.0-dive-hooks.patch"
OC_WHEEL="$(fetch open_clip_torch==3.3.0 'open_clip_torch-3.3.0-py3-none-any.whl' --only-binary :all:)"
rm -rf "$OUT/open_clip-site" "$OUT/open_clip-wheel"
mkdir -p "$OUT/open_clip-wheel" "$OUT/open_clip-site"
"$PY" -m zipfile -e "$OC_WHEEL" "$OUT/open_clip-wheel"
cp -r "$OUT/open_clip-wheel/open_clip_train" "$OUT/open_clip-site/"
apply_clean "$OUT/open_clip-site" "$OC_PATCH"
"$PY" -m py_compile "$OUT"/open_clip-site/open_clip_train/*.py || fail "patched open_clip_train does not compile"
log "ok: $(basename "$OC_PATCH") applies cleanly to open_clip_torch-3.3.0 (wheel)"
if command -v git >/dev/null; then
    # the layout of a fork (a git checkout of open_clip v3.3.0 keeps the package under src/)
    FORK="$OUT/open_clip-fork"
    rm -rf "$FORK" && mkdir -p "$FORK/src"
    cp -r "$OUT/open_clip-wheel/open_clip_train" "$FORK/src/"
    git -C "$FORK" init -q
    git -C "$FORK" apply --check --directory=src "$OC_PATCH" || fail "$(basename "$OC_PATCH"): git apply --directory=src fails on the fork layout"
    log "ok: $(basename "$OC_PATCH") applies with git apply --directory=src (fork layout)"
fi
echo "DIVE_TEST_OPEN_CLIP_PATH=$OUT/open_clip-site"

if [ "$TEST" = 1 ]; then
    [ ${#PYTEST_ARGS[@]} -gt 0 ] || PYTEST_ARGS=(tests/test_patches.py tests/test_launch_torchrun.py tests/test_horovod.py
                                               tests/test_slurm.py tests/test_train.py tests/test_preemption.py -q)
    log "running the distributed tests against the patched open_clip_train: ${PYTEST_ARGS[*]}"
    cd "$REPO"
    PYTHONPATH="$OUT/open_clip-site" "$PY" -c 'import open_clip_train.hooks, sys; sys.exit(not open_clip_train.hooks.__file__.startswith(sys.argv[1]))' \
        "$OUT/open_clip-site" || fail "the patched open_clip_train does not shadow the installed one on PYTHONPATH"
    DIVE_TEST_OPEN_CLIP_PATH="$OUT/open_clip-site" PYTHONPATH="$OUT/open_clip-site:$REPO${PYTHONPATH:+:$PYTHONPATH}" \
        "$PY" -m pytest "${PYTEST_ARGS[@]}" || fail "tests failed with the patched open_clip_train"
    log "ok: the distributed tests pass with the patched open_clip_train"
fi
