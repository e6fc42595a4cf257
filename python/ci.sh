#!/usr/bin/env bash
# Builds the Python wheel and runs its tests in a fresh virtualenv (called by .ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf target/pyenv target/wheels
python3 -m venv target/pyenv
# shellcheck disable=SC1091
. target/pyenv/bin/activate
pip install --quiet --upgrade pip
pip install --quiet "maturin>=1.5,<2" pytest pyarrow pandas numpy duckdb pyyaml
(cd python && maturin build --quiet --out ../target/wheels)
pip install --quiet target/wheels/powersynth-*.whl
# The installed wheel, not the source tree, is what the tests import.
(cd target && python -m pytest -q ../python/tests)
