#!/usr/bin/env bash
# Builds learn2learn 0.2.0 for this Python. Its sdist ships Cython C files generated for Python <= 3.10
# (they include longintrepr.h, gone in 3.11) and declares dependencies that no longer resolve, so we
# regenerate the three .pyx files with Cython 3 and install it without its declared dependencies.
set -euo pipefail
PYTHON=${PYTHON:-python3}
if "$PYTHON" -c "import learn2learn" 2>/dev/null; then
    echo "learn2learn already installed"; exit 0
fi
"$PYTHON" -m pip install -q "cython>=3,<4" gym tqdm scipy requests
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$PYTHON" -m pip download -q --no-deps --no-binary :all: learn2learn==0.2.0 -d "$work"
tar xzf "$work"/learn2learn-0.2.0.tar.gz -C "$work"
cd "$work/learn2learn-0.2.0"
for pyx in learn2learn/data/meta_dataset learn2learn/data/task_dataset learn2learn/data/transforms; do
    "$PYTHON" -m cython -3 "$pyx.pyx" -o "$pyx.c"
done
"$PYTHON" -m pip install -q --no-deps --no-build-isolation .
cd / && "$PYTHON" -c "import learn2learn; print('learn2learn', learn2learn.__version__, 'installed')"
