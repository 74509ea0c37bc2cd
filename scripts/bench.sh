#!/usr/bin/env bash
# Benchmarks with figures side by side with their baselines. Usage: scripts/bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench --locked --bench auth_token
