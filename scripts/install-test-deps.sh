#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian machine, without enabling system services.
# Idempotent; run as root (CI does). Usage: scripts/install-test-deps.sh
set -euo pipefail

# The Rust toolchain (cargo, rustfmt, clippy) comes with the machine; check rather than assume.
for tool in cargo rustfmt cargo-clippy; do
    command -v "$tool" >/dev/null || { echo "error: $tool not found; install the Rust toolchain (rustup) with rustfmt and clippy" >&2; exit 1; }
done

# No system packages are needed yet: the token tests use an in-process OAuth2 server. The mail
# server tests (Dovecot, Postfix) add their packages here.
echo "test dependencies: ok"
