//! Reading, side by side with its peer in the same run (issue 13's goals), against the real
//! Dovecot over implicit TLS with XOAUTH2 and a cached token:
//!
//! 1. a poll with nothing new, of a 50,000-message and of a 10-message mailbox;
//! 2. 10 new messages in the 50,000-message mailbox: `mailpilot poll` vs. a Python `imaplib` script
//!    (`UID FETCH n:*`), interleaved rounds;
//! 3. peak memory while handling one 20 MB message, with each handler (JSON, `--save`, `--exec`).
//!
//! Run with `scripts/bench.sh poll` (root; it installs and starts the test servers).

#[path = "common.rs"]
mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use std::process::Command;

use common::{keep_for_profiling, mailpilot, measure, median, Sample, MEASURE};
use support::{MailStack, TestEnv};

const BIG: usize = 50_000;
const SMALL: usize = 10;
const NEW: usize = 10;
const RUNS: usize = 15;
const ROUNDS: usize = 7;
const HUGE: usize = 20_000_000;

/// A 2 KB message like a notification.
fn message(n: usize) -> Vec<u8> {
    let mut m = format!(
        "From: Monitor <monitor@example.com>\r\nTo: ops@example.com\r\nSubject: check {n}\r\nMessage-ID: <{n}.{}@example.com>\r\nDate: Fri, 27 Nov 2026 08:00:00 +0000\r\n\r\n",
        std::process::id()
    );
    for i in 0..28 {
        m.push_str(&format!(
            "line {i:02} of the report: all checks passed, nothing to do here.\r\n"
        ));
    }
    m.into_bytes()
}

/// The mailbox the benchmarks read.
const MAILBOX: &str = "Reports";

/// One mailbox owner: a user, an environment whose account reads their `Reports` mailbox, a
/// cached token.
struct Reader {
    user: String,
    env: TestEnv,
    token: String,
}

impl Reader {
    fn new(stack: &MailStack, test: &str, seeded: usize) -> Reader {
        let (env, user) = TestEnv::for_mailbox(stack, test);
        env.import_for(&stack.oauth, &user);
        if seeded > 0 {
            stack.seed_mailbox(&user, MAILBOX, seeded, &message(0));
        } else {
            stack.create_mailbox(&user, MAILBOX);
        }
        let token = env
            .run(&["auth", "token", "work"])
            .stdout
            .trim()
            .to_string();
        Reader { user, env, token }
    }

    fn poll(&self, secret: &str, extra: &[&str]) -> Sample {
        let mut args = vec!["poll", "--mailbox", MAILBOX];
        args.extend_from_slice(extra);
        measure(&mut mailpilot(&self.env, &args, secret))
    }
}

fn main() {
    let stack = MailStack::get();
    let secret = stack.oauth.client_secret();
    let big = Reader::new(stack, "bench-big", BIG);
    let small = Reader::new(stack, "bench-small", SMALL);
    for r in [&big, &small] {
        r.poll(&secret, &["--from-now"]);
    }
    // `cargo bench --bench poll -- none new huge` picks tables (all by default).
    let wants = common::tables_wanted();
    if wants("none") {
        no_news(&big, &small, &secret);
    }
    if wants("new") {
        ten_new(stack, &big, &secret);
    }
    if wants("huge") {
        huge_message(stack, &secret);
    }
    if std::env::var_os("MP_BENCH_KEEP").is_some() {
        eprintln!(
            "big INBOX: {}; token in BENCH_ACCESS_TOKEN: {}",
            big.user, big.token
        );
    }
    keep_for_profiling(&big.env);
}

/// Table 1: nothing new, 50k vs. 10 messages, alternating.
fn no_news(big: &Reader, small: &Reader, secret: &str) {
    let (mut b, mut s) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        b.push(big.poll(secret, &[]).wall_ms);
        s.push(small.poll(secret, &[]).wall_ms);
    }
    let (b, s) = (median(&mut b), median(&mut s));
    println!("poll with nothing new ({RUNS} runs each, alternating; Dovecot IMAPS + XOAUTH2)");
    println!("{:<36} {:>10}", "mailbox", "median ms");
    println!("{:<36} {b:>10.1}", format!("{BIG} messages"));
    println!("{:<36} {s:>10.1}", format!("{SMALL} messages"));
    println!("50k / 10: {:.2}x", b / s);
    println!();
}

/// Table 2: 10 new messages in the 50k INBOX, mailpilot vs. imaplib, interleaved rounds (each
/// round delivers 10 new messages and both read the same 10).
fn ten_new(stack: &MailStack, big: &Reader, secret: &str) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/imaplib_poll.py");
    let ca = stack.ca_file.display().to_string();
    let port = stack.ports.imaps.to_string();
    let (mut peer, mut ours) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let first = uidnext(stack, &big.user);
        for n in 0..NEW {
            stack.deliver_raw(&big.user, MAILBOX, &message(round * NEW + n + 1));
        }
        let first = first.to_string();
        peer.push(measure(
            Command::new("python3")
                .args([
                    MEASURE,
                    "python3",
                    script,
                    "127.0.0.1",
                    &port,
                    &ca,
                    &big.user,
                    MAILBOX,
                    &first,
                ])
                .env("BENCH_ACCESS_TOKEN", &big.token),
        ));
        ours.push(big.poll(secret, &[]));
    }
    println!(
        "{NEW} new messages in the {BIG}-message mailbox ({ROUNDS} interleaved rounds, medians)"
    );
    println!(
        "{:<46} {:>9} {:>8} {:>12}",
        "client", "wall ms", "CPU ms", "peak RSS MB"
    );
    let mut walls = Vec::new();
    for (name, runs) in [
        ("peer: python3 imaplib, UID FETCH n:*", &peer),
        ("mailpilot poll (JSON to stdout)", &ours),
    ] {
        let wall = median(&mut runs.iter().map(|s| s.wall_ms).collect::<Vec<_>>());
        let cpu = median(&mut runs.iter().map(|s| s.cpu_ms).collect::<Vec<_>>());
        let rss = runs.iter().map(|s| s.rss_kib).max().unwrap_or(0) as f64 / 1024.0;
        println!("{name:<46} {wall:>9.1} {cpu:>8.1} {rss:>12.1}");
        walls.push(wall);
    }
    println!("mailpilot / imaplib wall: {:.2}x", walls[1] / walls[0]);
    println!();
}

fn uidnext(stack: &MailStack, user: &str) -> u32 {
    let out = stack.doveadm(&["mailbox", "status", "-u", user, "uidnext", MAILBOX], None);
    out.trim()
        .rsplit('=')
        .next()
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("uidnext from {out:?}"))
}

/// Table 3: one 20 MB plain-text message, each handler, a fresh mailbox each.
fn huge_message(stack: &MailStack, secret: &str) {
    let mut text = String::with_capacity(HUGE + 200);
    text.push_str("From: Archive <archive@example.com>\r\nTo: ops@example.com\r\nSubject: the big export\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n");
    let line = "2026-11-27T08:00:00Z INFO exported row 0123456789 abcdefghijklmnopqrstuvwxyz\r\n";
    while text.len() + line.len() <= HUGE {
        text.push_str(line);
    }
    println!(
        "one {:.0} MB plain-text message, peak memory per handler",
        text.len() as f64 / 1e6
    );
    println!(
        "{:<36} {:>9} {:>12} {:>14}",
        "handler", "wall ms", "peak RSS MB", "x message size"
    );
    for (test, name, args) in [
        ("bench-huge-json", "JSON to stdout", vec![]),
        ("bench-huge-save", "--save DIR", vec!["--save", "SAVE"]),
        (
            "bench-huge-exec",
            "--exec 'cat >/dev/null'",
            vec!["--exec", "cat >/dev/null"],
        ),
    ] {
        let reader = Reader::new(stack, test, 0);
        stack.deliver_raw(&reader.user, MAILBOX, text.as_bytes());
        let save = reader.env.root().join("saved");
        std::fs::create_dir_all(&save).expect("save dir");
        let save = save.display().to_string();
        let mut full = vec!["--all"];
        full.extend(
            args.iter()
                .map(|a| if *a == "SAVE" { save.as_str() } else { a }),
        );
        let s = reader.poll(secret, &full);
        let mb = s.rss_kib as f64 / 1024.0;
        println!(
            "{name:<36} {:>9.0} {mb:>12.1} {:>14.2}",
            s.wall_ms,
            s.rss_kib as f64 * 1024.0 / text.len() as f64
        );
    }
    println!();
}
