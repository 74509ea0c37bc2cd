//! Sending, side by side with its peers in the same run (issue 13's goals):
//!
//! 1. one-message `mailpilot send` (cached token) vs. a Python `smtplib` script doing the same
//!    send, 20 runs each: median, slowest, mean CPU;
//! 2. a mail merge of 1,000 × 4 KB vs. Postfix's own load generator `smtp-source` (one session,
//!    no TLS, no AUTH: the server's ceiling), interleaved rounds: wall, CPU, peak memory;
//! 3. peak memory of a merge of 1,000 and of 100,000 rows (into a sink that accepts everything,
//!    so only mailpilot is measured): it must not grow with the rows.
//!
//! Run with `scripts/bench.sh` (root; it installs and starts the test servers).

#[path = "common.rs"]
mod common;
#[path = "sink.rs"]
mod sink;
#[path = "../tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::process::Command;

use common::{keep_for_profiling, mailpilot, measure, median, MEASURE};
use support::{MailStack, TestEnv};

const ONE_RUNS: usize = 20;
const MERGE_ROWS: usize = 1_000;
const ROUNDS: usize = 3;
const BODY_BYTES: usize = 4096;

fn main() {
    let stack = MailStack::get();
    let (user, rcpt) = (stack.user("bench"), stack.user("bench-rcpt"));
    let env = TestEnv::new();
    let port = stack.ports.postfix_submission;
    env.config_for_stack(stack, &user, (port, "starttls", "xoauth2"), &stack.ca_file);
    env.import_for(&stack.oauth, &user);
    let token = env
        .run(&["auth", "token", "work"])
        .stdout
        .trim()
        .to_string();
    let secret = stack.oauth.client_secret();

    // `cargo bench --bench send -- one merge memory sendmail` picks tables (all by default).
    let wants = common::tables_wanted();
    if wants("one") {
        one_message(stack, &env, &secret, &token, (&user, &rcpt));
    }
    if wants("merge") {
        merge_vs_smtp_source(stack, &env, &secret, (&user, &rcpt));
    }
    if wants("memory") {
        merge_memory(stack, &user, &secret);
    }
    if wants("sendmail") {
        sendmail_parallel(stack, &secret);
    }
    keep_for_profiling(&env);
}

/// Table 1: one message, mailpilot vs. smtplib, alternating runs.
fn one_message(stack: &MailStack, env: &TestEnv, secret: &str, token: &str, who: (&str, &str)) {
    let (user, rcpt) = who;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/smtplib_send.py");
    let ca = stack.ca_file.display().to_string();
    let port = stack.ports.postfix_submission.to_string();
    let (mut python, mut ours, mut floor) = (Vec::new(), Vec::new(), Vec::new());
    let refreshes = stack.oauth.refresh_count_for(user);
    for _ in 0..ONE_RUNS {
        floor.push(measure(Command::new("python3").args([MEASURE, "true"])));
        python.push(measure(
            Command::new("python3")
                .args([
                    MEASURE,
                    "python3",
                    script,
                    "127.0.0.1",
                    &port,
                    &ca,
                    user,
                    rcpt,
                ])
                .env("BENCH_ACCESS_TOKEN", token),
        ));
        let args = [
            "send",
            "--to",
            rcpt,
            "--subject",
            "bench",
            "--text",
            "benchmark message",
        ];
        ours.push(measure(&mut mailpilot(env, &args, secret)));
    }
    assert_eq!(
        stack.oauth.refresh_count_for(user),
        refreshes,
        "the cached token was used"
    );
    stack.wait_delivered(rcpt, 2 * ONE_RUNS);
    println!("one-message send, {ONE_RUNS} runs each (alternating), Postfix submission STARTTLS + XOAUTH2");
    println!(
        "{:<32} {:>10} {:>10} {:>13} {:>12}",
        "client", "median ms", "max ms", "max/median", "mean CPU ms"
    );
    for (name, runs) in [
        ("floor: measuring /bin/true", &floor),
        ("peer: python3 smtplib", &python),
        ("mailpilot send", &ours),
    ] {
        let mut walls: Vec<f64> = runs.iter().map(|s| s.wall_ms).collect();
        let med = median(&mut walls);
        let max = walls.iter().copied().fold(0.0, f64::max);
        let cpu = runs.iter().map(|s| s.cpu_ms).sum::<f64>() / runs.len() as f64;
        println!(
            "{name:<32} {med:>10.1} {max:>10.1} {:>13.2} {cpu:>12.1}",
            max / med
        );
        if std::env::var_os("MP_BENCH_VERBOSE").is_some() {
            let all: Vec<String> = runs
                .iter()
                .map(|s| format!("{:.1}/{:.1}", s.wall_ms, s.cpu_ms))
                .collect();
            eprintln!("  {name} wall/cpu ms in run order: {}", all.join(" "));
        }
    }
    println!();
}

/// Writes the merge template and a data file of `rows` rows to `rcpt`; returns the data file.
fn merge_files(env: &TestEnv, rows: usize, rcpt: &str) -> std::path::PathBuf {
    let dir = env.config_path().parent().expect("dir").join("templates");
    std::fs::create_dir_all(&dir).expect("templates");
    let line = "0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 01234567\n";
    let body = line.repeat(BODY_BYTES / line.len());
    std::fs::write(
        dir.join("bench.j2"),
        format!("{{% block subject %}}merge {{{{ n }}}}{{% endblock %}}{{% block text %}}Row {{{{ n }}}}\n{body}{{% endblock %}}"),
    )
    .expect("template");
    let mut csv = String::from("to,n\n");
    for i in 0..rows {
        csv.push_str(&format!("{rcpt},{i}\n"));
    }
    let data = env.root().join(format!("rows-{rows}.csv"));
    std::fs::write(&data, csv).expect("csv");
    data
}

/// Table 2: 1,000 × 4 KB, mailpilot's merge vs. `smtp-source -s 1 -d`, interleaved.
fn merge_vs_smtp_source(stack: &MailStack, env: &TestEnv, secret: &str, who: (&str, &str)) {
    let (user, rcpt) = who;
    let data = merge_files(env, MERGE_ROWS, rcpt);
    let data = data.to_str().expect("utf8");
    let (mut per_message, mut one_session, mut ours) = (Vec::new(), Vec::new(), Vec::new());
    let relay = format!("127.0.0.1:{}", stack.ports.relay);
    let (count, length) = (MERGE_ROWS.to_string(), BODY_BYTES.to_string());
    let source = |extra: &[&str]| {
        let mut cmd = Command::new("python3");
        cmd.args([MEASURE, "smtp-source", "-s", "1"])
            .args(extra)
            .args(["-m", &count, "-l", &length, "-f", user, "-t", rcpt, &relay]);
        measure(&mut cmd)
    };
    for round in 0..ROUNDS {
        per_message.push(source(&[]));
        one_session.push(source(&["-d"]));
        let batch = format!("round-{round}");
        let args = ["send", "-t", "bench", "--each", data, "--batch", &batch];
        ours.push(measure(&mut mailpilot(env, &args, secret)));
    }
    // Every run exited 0: the server accepted every message (delivery goes on behind).
    println!("mail merge, {MERGE_ROWS} messages x {BODY_BYTES} B, one session; {ROUNDS} interleaved rounds, medians");
    println!(
        "{:<44} {:>9} {:>9} {:>8} {:>13}",
        "client", "wall ms", "msgs/s", "CPU ms", "peak RSS MB"
    );
    let mut rows = Vec::new();
    for (name, runs) in [
        ("peer: smtp-source -s 1 (no TLS, no AUTH)", &per_message),
        ("peer: smtp-source -s 1 -d (one connection)", &one_session),
        ("mailpilot send --each (STARTTLS + XOAUTH2)", &ours),
    ] {
        let wall = median(&mut runs.iter().map(|s| s.wall_ms).collect::<Vec<_>>());
        let cpu = median(&mut runs.iter().map(|s| s.cpu_ms).collect::<Vec<_>>());
        let rss = runs.iter().map(|s| s.rss_kib).max().unwrap_or(0) as f64 / 1024.0;
        println!(
            "{name:<44} {wall:>9.0} {:>9.0} {cpu:>8.0} {rss:>13.1}",
            MERGE_ROWS as f64 / (wall / 1000.0)
        );
        rows.push(wall);
    }
    println!(
        "mailpilot / smtp-source wall: {:.2}x (-s 1), {:.2}x (-s 1 -d)",
        rows[2] / rows[0],
        rows[2] / rows[1]
    );
    println!();
}

/// Table 3: peak memory of a merge of 1,000 and 100,000 rows into a sink.
fn merge_memory(stack: &MailStack, user: &str, secret: &str) {
    let sink = sink::Sink::start();
    let env = TestEnv::new();
    env.config_for_stack(
        stack,
        user,
        (sink.port(), "none", "xoauth2"),
        Path::new(&stack.ca_file),
    );
    env.import_for(&stack.oauth, user);
    println!("mail merge peak memory (into a sink on loopback that accepts everything)");
    println!(
        "{:<12} {:>9} {:>9} {:>8} {:>13}",
        "rows", "wall ms", "msgs/s", "CPU ms", "peak RSS MB"
    );
    for rows in [1_000, 100_000] {
        let data = merge_files(&env, rows, "sink@example.com");
        let before = sink.messages();
        let args = [
            "send",
            "-t",
            "bench",
            "--each",
            data.to_str().expect("utf8"),
        ];
        let s = measure(&mut mailpilot(&env, &args, secret));
        assert_eq!(sink.messages() - before, rows, "the sink got every message");
        println!(
            "{rows:<12} {:>9.0} {:>9.0} {:>8.0} {:>13.1}",
            s.wall_ms,
            rows as f64 / (s.wall_ms / 1000.0),
            s.cpu_ms,
            s.rss_kib as f64 / 1024.0
        );
    }
    keep_for_profiling(&env);
    println!();
}

/// Table 4: 1,000 messages handed to `sendmail` by 8 parallel callers while the daemon runs: all
/// delivered, none twice; wall time and the daemon's peak memory.
fn sendmail_parallel(stack: &MailStack, secret: &str) {
    use std::io::Write as _;
    use std::process::Stdio;
    const CALLERS: usize = 8;
    const EACH: usize = 125;
    let (env, _user, rcpt) =
        TestEnv::for_sendmail(stack, "bench-sm", stack.ports.postfix_submission);
    let mut daemon = env
        .cmd(&["daemon"])
        .env("MP_TEST_SECRET", secret)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("daemon");
    let started = std::time::Instant::now();
    std::thread::scope(|scope| {
        for caller in 0..CALLERS {
            let env = &env;
            scope.spawn(move || {
                for n in 0..EACH {
                    let mut child = env
                        .cmd(&["sendmail", "-i", "root"])
                        .env("MP_TEST_SECRET", secret)
                        .stdin(Stdio::piped())
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .spawn()
                        .expect("sendmail");
                    let message = format!("Subject: sm {caller}-{n}\n\nfrom caller {caller}\n");
                    child
                        .stdin
                        .take()
                        .expect("stdin")
                        .write_all(message.as_bytes())
                        .expect("write");
                    assert!(
                        child.wait().expect("wait").success(),
                        "sendmail accepted it"
                    );
                }
            });
        }
    });
    let accepted = started.elapsed();
    let total = CALLERS * EACH;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let mut count = 0;
    while std::time::Instant::now() < deadline {
        count = stack.delivered(&rcpt).len();
        if count >= total {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    let delivered = started.elapsed();
    let peak = std::fs::read_to_string(format!("/proc/{}/status", daemon.id()))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0;
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &daemon.id().to_string()])
        .status();
    let _ = daemon.wait();
    let subjects: std::collections::HashSet<String> = stack
        .delivered(&rcpt)
        .iter()
        .filter_map(|raw| {
            mail_parser::MessageParser::default()
                .parse(raw)?
                .subject()
                .map(str::to_string)
        })
        .collect();
    assert_eq!(count, total, "every message delivered");
    assert_eq!(subjects.len(), total, "none twice");
    println!("sendmail: {total} messages from {CALLERS} parallel callers (one process each), daemon running");
    println!(
        "all accepted (exit 0) after {:.1} s ({:.0} msgs/s); all in the mailbox after {:.1} s; none twice; daemon peak RSS {peak:.1} MB",
        accepted.as_secs_f64(),
        total as f64 / accepted.as_secs_f64(),
        delivered.as_secs_f64()
    );
    println!();
}
