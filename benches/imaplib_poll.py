#!/usr/bin/env python3
"""Peer for benches/poll.rs: what a hand-written cron script does with the standard library to read
new mail: log in with XOAUTH2 over implicit TLS, open the mailbox read-only, fetch every message
from a known UID on in one `UID FETCH n:* (BODY.PEEK[])`, and write them out (to /dev/null here).
The access token comes from the environment (already cached).

Usage: imaplib_poll.py HOST PORT CA_FILE USER MAILBOX FIRST_UID   (token in $BENCH_ACCESS_TOKEN)
"""
import imaplib
import os
import ssl
import sys

host, port, ca_file, user, mailbox, first = sys.argv[1:7]
token = os.environ["BENCH_ACCESS_TOKEN"]
ctx = ssl.create_default_context(cafile=ca_file)
imap = imaplib.IMAP4_SSL(host, int(port), ssl_context=ctx)
imap.authenticate("XOAUTH2", lambda _: f"user={user}\x01auth=Bearer {token}\x01\x01".encode())
typ, _ = imap.select(mailbox, readonly=True)
if typ != "OK":
    sys.exit(f"select failed: {typ}")
typ, data = imap.uid("FETCH", f"{first}:*", "(BODY.PEEK[])")
if typ != "OK":
    sys.exit(f"fetch failed: {typ}")
with open(os.devnull, "wb") as out:
    for item in data:
        if isinstance(item, tuple):
            out.write(item[1])
imap.logout()
