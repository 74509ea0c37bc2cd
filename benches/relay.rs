//! The relay, side by side with Postfix in the same run (issue 15's benchmark): Postfix's own load
//! generator `smtp-source` sends 1,000 × 4 KB over 1 and over 4 sessions into
//!
//! - `mailpilot relay` (loopback clients without AUTH: `smtp-source` speaks neither AUTH nor
//!   TLS), which puts each message in the outbox (fsynced) before its 250 and delivers through
//!   Postfix's submission port with STARTTLS and XOAUTH2 over one kept session;
//! - Postfix's own smtpd (the same server without TLS and AUTH), which queues and delivers to
//!   Dovecot by LMTP.
//!
//! Figures: how fast each accepts (messages per second, `smtp-source`'s wall time), how long until
//! the last message is in the Dovecot mailbox, and the relay's peak memory.
//!
//! Run with `scripts/bench.sh relay` (root; it installs and starts the test servers).

#[path = "common.rs"]
mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{keep_for_profiling, measure, median, MEASURE};
use support::mailstack::{free_port, wait_for_port};
use support::{MailStack, TestEnv};

const MESSAGES: usize = 1_000;
const BODY_BYTES: usize = 4096;
const ROUNDS: usize = 2;

/// One measured run: acceptance wall time and the time until every message was delivered.
struct Run {
    accept_ms: f64,
    delivered_ms: f64,
}

fn main() {
    let stack = MailStack::get();
    let secret = stack.oauth.client_secret();
    let (env, user, _) = TestEnv::for_sendmail(stack, "bench-rl", stack.ports.postfix_submission);
    let port = free_port();
    let mut text = std::fs::read_to_string(env.config_path()).expect("config");
    text.push_str(&format!(
        "\n[relay]\nlisten = [\"127.0.0.1:{port}\"]\nallow_loopback_without_auth = true\naccount = \"work\"\nallowed_from = [\"*\"]\n"
    ));
    env.write_config(&text);
    let mut relay = env
        .cmd(&["relay", "--quiet"])
        .env("MP_TEST_SECRET", &secret)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the relay");
    wait_for_port(port, || "the relay did not start".into());
    println!(
        "smtp-source -m {MESSAGES} -l {BODY_BYTES} -d into each server; {ROUNDS} interleaved rounds, medians; delivered = until the last message is in Dovecot"
    );
    println!(
        "{:<34} {:>8} {:>10} {:>9} {:>14} {:>12}",
        "into", "sessions", "accept ms", "msgs/s", "delivered ms", "delivered/s"
    );
    for sessions in [1, 4] {
        let (mut ours, mut postfix) = (Vec::new(), Vec::new());
        for round in 0..ROUNDS {
            let tag = format!("{sessions}-{round}");
            ours.push(run(
                stack,
                &user,
                port,
                &format!("bench-rl-relay-{tag}"),
                sessions,
            ));
            postfix.push(run(
                stack,
                &user,
                stack.ports.relay,
                &format!("bench-rl-postfix-{tag}"),
                sessions,
            ));
        }
        for (name, runs) in [
            ("mailpilot relay (outbox, XOAUTH2)", &ours),
            ("peer: Postfix smtpd (queue, LMTP)", &postfix),
        ] {
            let accept = median(&mut runs.iter().map(|r| r.accept_ms).collect::<Vec<_>>());
            let delivered = median(&mut runs.iter().map(|r| r.delivered_ms).collect::<Vec<_>>());
            println!(
                "{name:<34} {sessions:>8} {accept:>10.0} {:>9.0} {delivered:>14.0} {:>12.0}",
                MESSAGES as f64 / (accept / 1000.0),
                MESSAGES as f64 / (delivered / 1000.0)
            );
        }
    }
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", relay.id())).unwrap_or_default();
    let peak = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .unwrap_or("?")
        .trim()
        .to_string();
    println!("relay process peak RSS after all rounds (VmHWM): {peak}");
    println!();
    keep_for_profiling(&env);
    let _ = relay.kill();
    let _ = relay.wait();
}

/// `smtp-source` into `port` for a new recipient; then waits until all its messages arrived.
fn run(stack: &MailStack, from: &str, port: u16, rcpt: &str, sessions: usize) -> Run {
    let rcpt = stack.user(rcpt);
    let started = Instant::now();
    let sample = measure(
        Command::new("python3")
            .args([MEASURE, "smtp-source", "-d", "-s", &sessions.to_string()])
            .args(["-m", &MESSAGES.to_string(), "-l", &BODY_BYTES.to_string()])
            .args(["-f", from, "-t", &rcpt, &format!("127.0.0.1:{port}")]),
    );
    let deadline = Instant::now() + Duration::from_secs(300);
    while stack.delivered_count(&rcpt) < MESSAGES {
        assert!(Instant::now() < deadline, "{rcpt}: not all delivered");
        std::thread::sleep(Duration::from_millis(20));
    }
    Run {
        accept_ms: sample.wall_ms,
        delivered_ms: started.elapsed().as_secs_f64() * 1000.0,
    }
}
