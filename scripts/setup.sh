#!/usr/bin/env bash
# One-time set-up on a fresh machine: a virtual environment in .venv with PyTorch, tailtune
# (editable, with test and demo extras) and the Fashion-MNIST data of the offline demo.
# Safe to run again: every step is skipped or quick when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)

# PyTorch is pinned here (these builds are what this project is tested with); pyproject.toml
# keeps open ranges (torch>=2.1) for installs elsewhere.
"${PIP[@]}" install torch==2.14.1 torchvision==0.29.1 2>&1 | grep -v "^WARNING: Location" || true
"${PIP[@]}" install -e ".[dev]" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import tailtune, torch, open_clip, timm" \
  || { echo "setup: the Python packages did not install; see the pip output above." >&2; exit 1; }

# The demo's data: Debian's dataset-fashion-mnist (files under /usr/share/datasets/fashion-mnist).
if [ ! -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing the demo data (apt-get install dataset-fashion-mnist)"
    { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist; } >/dev/null \
      || echo "setup: could not install dataset-fashion-mnist; the demo will say where to put the files." >&2
  else
    echo "setup: the demo needs Fashion-MNIST: run 'sudo apt-get install dataset-fashion-mnist'," \
         "or set data.root to a folder with its four IDX files." >&2
  fi
fi
echo "setup: done (.venv ready)"
