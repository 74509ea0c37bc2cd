//! One-message `mailpilot send` with a cached token vs. a Python standard-library `smtplib` script
//! doing the same send (XOAUTH2 over STARTTLS), against the real Postfix submission service.
//!
//! Run with `cargo bench --bench send` (or `scripts/bench.sh`; needs root and the test servers
//! from `scripts/install-test-deps.sh`). Prints median wall ms, mean CPU ms (user+system of the
//! child) and the SMTP commands Postfix counted per session.

#[path = "../tests/support/mod.rs"]
mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::{MailStack, TestEnv};

const RUNS: usize = 30;

struct Figures {
    median: Duration,
    cpu_ms: f64,
    commands: String,
}

/// User+system CPU seconds of this process's waited-for children (`/proc/self/stat` cutime and
/// cstime, in clock ticks of 1/100 s).
fn children_cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    let after_comm = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // Fields 16 and 17 of the full line are at 13 and 14 after pid and comm.
    let ticks: f64 =
        fields[13].parse::<f64>().expect("cutime") + fields[14].parse::<f64>().expect("cstime");
    ticks / 100.0
}

fn last_command_count(stack: &MailStack) -> String {
    stack
        .postfix_log()
        .lines()
        .rev()
        .find(|l| l.contains("disconnect from") && l.contains("auth=1"))
        .and_then(|l| l.split_whitespace().find(|w| w.starts_with("commands=")))
        .map(|w| w.trim_start_matches("commands=").to_string())
        .unwrap_or_else(|| "?".into())
}

fn measure(stack: &MailStack, mut run: impl FnMut() -> std::process::Output) -> Figures {
    let mut times = Vec::with_capacity(RUNS);
    let cpu_before = children_cpu_secs();
    for _ in 0..RUNS {
        let started = Instant::now();
        let out = run();
        times.push(started.elapsed());
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let cpu = children_cpu_secs() - cpu_before;
    times.sort();
    std::thread::sleep(Duration::from_millis(300)); // let Postfix log the disconnect
    Figures {
        median: times[RUNS / 2],
        cpu_ms: cpu * 1000.0 / RUNS as f64,
        commands: last_command_count(stack),
    }
}

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

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/smtplib_send.py");
    let ca = stack.ca_file.display().to_string();
    let python = measure(stack, || {
        Command::new("python3")
            .args([script, "127.0.0.1", &port.to_string(), &ca, &user, &rcpt])
            .env("BENCH_ACCESS_TOKEN", &token)
            .output()
            .expect("python3")
    });
    let refreshes = stack.oauth.refresh_count_for(&user);
    let mailpilot = measure(stack, || {
        env.cmd(&[
            "send",
            "--to",
            &rcpt,
            "--subject",
            "bench",
            "--text",
            "benchmark message",
        ])
        .env("MP_TEST_SECRET", &secret)
        .output()
        .expect("mailpilot")
    });
    assert_eq!(
        stack.oauth.refresh_count_for(&user),
        refreshes,
        "the cached token was used"
    );
    stack.wait_delivered(&rcpt, 2 * RUNS);

    let merge = merge_vs_processes(stack, &env, &secret, &rcpt);

    println!(
        "one-message send, {RUNS} sequential processes each, Postfix submission STARTTLS + XOAUTH2"
    );
    println!(
        "{:<34} {:>10} {:>12} {:>16}",
        "client", "median ms", "mean CPU ms", "SMTP commands"
    );
    for (name, f) in [
        ("baseline: python3 smtplib", &python),
        ("mailpilot send (cached token)", &mailpilot),
    ] {
        println!(
            "{name:<34} {:>10.1} {:>12.1} {:>16}",
            f.median.as_secs_f64() * 1000.0,
            f.cpu_ms,
            f.commands
        );
    }
    println!();
    println!("{MERGE_ROWS} messages: one process per message vs. one mail merge (--each)");
    println!(
        "{:<34} {:>10} {:>12} {:>16}",
        "client", "total ms", "msgs/s", "SMTP logins"
    );
    for (name, ms, logins) in merge {
        println!(
            "{name:<34} {ms:>10.0} {:>12.1} {logins:>16}",
            MERGE_ROWS as f64 / (ms / 1000.0)
        );
    }
}

const MERGE_ROWS: usize = 100;

/// Sends MERGE_ROWS messages as MERGE_ROWS `send` processes, then as one merge; returns
/// (label, wall ms, logins the server validated through token introspection).
fn merge_vs_processes(
    stack: &MailStack,
    env: &TestEnv,
    secret: &str,
    rcpt: &str,
) -> Vec<(&'static str, f64, u64)> {
    let email = stack.user("bench");
    let logins = || stack.oauth.introspection_count_for(&email);
    let before = logins();
    let started = Instant::now();
    for i in 0..MERGE_ROWS {
        let out = env
            .cmd(&[
                "send",
                "--to",
                rcpt,
                "--subject",
                &format!("process {i}"),
                "--text",
                "x",
            ])
            .env("MP_TEST_SECRET", secret)
            .output()
            .expect("mailpilot");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let processes = (started.elapsed().as_secs_f64() * 1000.0, logins() - before);
    let dir = env.config_path().parent().expect("dir").join("templates");
    std::fs::create_dir_all(&dir).expect("templates");
    std::fs::write(
        dir.join("bench.j2"),
        "{% block subject %}merge {{ n }}{% endblock %}{% block text %}x{% endblock %}",
    )
    .expect("template");
    let mut csv = String::from("to,n\n");
    for i in 0..MERGE_ROWS {
        csv.push_str(&format!("{rcpt},{i}\n"));
    }
    let data = env.root().join("bench.csv");
    std::fs::write(&data, csv).expect("csv");
    let before = logins();
    let started = Instant::now();
    let out = env
        .cmd(&[
            "send",
            "-t",
            "bench",
            "--each",
            data.to_str().expect("utf8"),
        ])
        .env("MP_TEST_SECRET", secret)
        .output()
        .expect("mailpilot");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let merged = (started.elapsed().as_secs_f64() * 1000.0, logins() - before);
    vec![
        ("baseline: one send per message", processes.0, processes.1),
        ("mailpilot send --each (merge)", merged.0, merged.1),
    ]
}
