#!/usr/bin/env bash
# Installs the benchmark's baseline (DuckDB, from PyPI) and builds backflow in release mode.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet "duckdb==2.0.0"
cargo build --release
