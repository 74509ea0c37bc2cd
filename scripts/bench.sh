#!/usr/bin/env bash
# Benchmarks, each printing its figures side by side with its peers run in the same process and
# rounds: token handling, sending (one message, a 1,000-message merge vs. smtp-source, merge memory
# at 1,000 and 100,000 rows, 1,000 messages through sendmail from 8 callers), reading (polls of a
# 50,000-message mailbox vs. imaplib, memory for a 20 MB message) and the relay (smtp-source into it
# and into Postfix: acceptance, delivery, memory) and the state on PostgreSQL (cached tokens, files
# vs. database; 8 hosts x 20 accounts per expiry round; outbox drain by 1 vs. 4 daemons). Installs
# and starts what it needs (run as root, like scripts/test.sh).
# Usage: scripts/bench.sh [auth_token|send|poll|relay|shared_state]...
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-test-deps.sh
benches=("$@")
[ ${#benches[@]} -gt 0 ] || benches=(auth_token send poll relay shared_state)
for b in "${benches[@]}"; do
    cargo bench --locked --bench "$b"
done
