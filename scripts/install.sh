#!/usr/bin/env bash
# Installs everything fewshot needs into the current Python (python3, or $PYTHON): torch and torchvision,
# learn2learn (built from source, see install_learn2learn.sh), Streamlit and the rest.
# With --browser it also installs Debian's Chromium, which the browser tests drive (needs root and apt); with
# --ray, Ray (requirements-ray.txt, about 240 MB), to run training on a Ray cluster (FEWSHOT_RAY_ADDRESS).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
"$PYTHON" -m pip install -q --disable-pip-version-check -r requirements.txt
PYTHON="$PYTHON" bash scripts/install_learn2learn.sh
for option in "$@"; do
    case "$option" in
        --browser) command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } ;;
        --ray) "$PYTHON" -m pip install -q --disable-pip-version-check -r requirements-ray.txt ;;
        *) echo "install.sh: unknown option $option (--browser, --ray)" >&2; exit 2 ;;
    esac
done
