#!/usr/bin/env bash
# Benchmarks, each printing its figures side by side with a baseline run in the same process.
# The send benchmark starts the test mail servers: run as root after scripts/install-test-deps.sh.
# Usage: scripts/bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench --locked --bench auth_token
cargo bench --locked --bench send
