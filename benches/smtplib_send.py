#!/usr/bin/env python3
"""Baseline for benches/send.rs: one message over STARTTLS with XOAUTH2 using only the standard
library, the way a hand-written cron script does it. The access token comes from the environment
(already cached), so only the SMTP work is compared.

Usage: smtplib_send.py HOST PORT CA_FILE FROM TO   (token in $BENCH_ACCESS_TOKEN)
"""
import base64
import os
import smtplib
import ssl
import sys
from email.message import EmailMessage

host, port, ca_file, sender, rcpt = sys.argv[1:6]
token = os.environ["BENCH_ACCESS_TOKEN"]

msg = EmailMessage()
msg["From"] = sender
msg["To"] = rcpt
msg["Subject"] = "bench"
msg.set_content("benchmark message\n")

ctx = ssl.create_default_context(cafile=ca_file)
with smtplib.SMTP(host, int(port), timeout=30) as smtp:
    smtp.starttls(context=ctx)
    smtp.ehlo()
    auth = base64.b64encode(f"user={sender}\x01auth=Bearer {token}\x01\x01".encode()).decode()
    code, reply = smtp.docmd("AUTH", "XOAUTH2 " + auth)
    if code != 235:
        sys.exit(f"auth failed: {code} {reply!r}")
    smtp.send_message(msg)
