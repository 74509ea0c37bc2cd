#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian machine, without starting or enabling system
# services: the tests start their own Dovecot, Postfix and PostgreSQL instances on loopback ports.
# Idempotent; run as root (CI does). Usage: scripts/install-test-deps.sh
set -euo pipefail

# The Rust toolchain (cargo, rustfmt, clippy) comes with the machine; check rather than assume.
for tool in cargo rustfmt cargo-clippy; do
    command -v "$tool" >/dev/null || { echo "error: $tool not found; install the Rust toolchain (rustup) with rustfmt and clippy" >&2; exit 1; }
done

packages=(dovecot-core dovecot-imapd dovecot-lmtpd dovecot-submissiond postfix libsasl2-modules openssl python3 time s-nail swaks libnet-ssleay-perl tinyproxy microsocks socat man-db systemd adduser postgresql)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "error: missing packages: ${missing[*]}; install them with: sudo $0" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    # Postfix: install without writing /etc/postfix/main.cf or asking questions.
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    # Keep apt from starting the system services (restored afterwards if we added the policy).
    added_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        added_policy=1
    fi
    trap '[ "$added_policy" -eq 1 ] && rm -f /usr/sbin/policy-rc.d' EXIT
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    # If a system instance got started anyway, stop it: it would hold the default ports.
    for svc in dovecot postfix tinyproxy postgresql; do
        command -v systemctl >/dev/null && systemctl disable --now "$svc" >/dev/null 2>&1 || true
    done
fi

for bin in /usr/sbin/dovecot /usr/sbin/postfix /usr/bin/openssl; do
    [ -x "$bin" ] || { echo "error: $bin missing after install" >&2; exit 1; }
done
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { echo "error: PostgreSQL's initdb missing after install" >&2; exit 1; }
# The test clusters run as the `postgres` user (initdb refuses root); the package creates it.
id postgres >/dev/null 2>&1 || { echo "error: no postgres user after installing postgresql" >&2; exit 1; }
echo "test dependencies: ok ($(dovecot --version | cut -d' ' -f1) dovecot, postfix $(postconf -d -h mail_version 2>/dev/null))"
