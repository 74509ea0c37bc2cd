#!/usr/bin/env bash
# The whole test suite, as CI runs it: system packages the tests need (installed when missing),
# formatting, lints, dependency policy, unit and integration tests, the Debian package.
# Usage: scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export RUST_BACKTRACE=0 RUST_LIB_BACKTRACE=0 CARGO_TERM_COLOR=never

echo "== system packages (Dovecot, Postfix, PostgreSQL, openssl, python3, proxies, man-db)"
# Installs what is missing when run as root; otherwise names the one command to run.
scripts/install-test-deps.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --locked --all-targets -- -D warnings

echo "== dependency policy"
scripts/check-deps.sh

echo "== cargo test"
cargo test --locked

echo "== Debian package (scripts/package.sh)"
# Builds the release binary and the .deb; as root (CI) also installs, checks and purges it.
if [ "$(id -u)" -eq 0 ]; then
    scripts/package.sh --install
else
    scripts/package.sh
fi
