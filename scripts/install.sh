#!/usr/bin/env bash
# Installs everything fewshot needs into the current Python (python3, or $PYTHON): torch and torchvision,
# learn2learn (built from source, see install_learn2learn.sh), Streamlit and the rest.
# With --browser it also installs Debian's Chromium, which the browser tests drive (needs root and apt).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
"$PYTHON" -m pip install -q --disable-pip-version-check -r requirements.txt
PYTHON="$PYTHON" bash scripts/install_learn2learn.sh
if [ "${1:-}" = "--browser" ] && ! command -v chromium >/dev/null; then
    apt-get update -qq && apt-get install -y -qq chromium >/dev/null
fi
