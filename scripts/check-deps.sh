#!/usr/bin/env bash
# Fails if a second rustls crypto provider (aws-lc-rs) or OpenSSL/native-tls enters the dependency
# tree: mailpilot uses rustls with ring only (one provider, no system TLS library).
set -euo pipefail
cd "$(dirname "$0")/.."
bad=0
for crate in aws-lc-rs aws-lc-sys openssl-sys openssl native-tls; do
    if cargo tree --locked -e normal,build -i "$crate" >/dev/null 2>&1; then
        echo "error: $crate is in the dependency tree:" >&2
        cargo tree --locked -e normal,build -i "$crate" >&2 || true
        bad=1
    fi
done
if ! cargo tree --locked -e normal -i ring >/dev/null 2>&1; then
    echo "error: ring is not in the dependency tree; rustls must use the ring provider" >&2
    bad=1
fi
[ "$bad" -eq 0 ] && echo "ok: rustls with ring only; no aws-lc-rs, OpenSSL or native-tls"
exit "$bad"
