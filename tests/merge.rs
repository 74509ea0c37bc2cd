//! Templated mail and mail merge (`send --template … --each …`) against the real servers: one
//! connection per batch, validation before sending, the journal across crashes and reruns.

use std::collections::HashMap;
use std::fs;
use std::process::Stdio;
use std::time::{Duration, Instant};

use mail_parser::{MessageParser, MimeHeaders};

use crate::support::mailstack::{DEFER_DOMAIN, REJECT_DOMAIN};
use crate::support::{MailStack, Policy, Run, TestEnv};

const TEMPLATE: &str = "{% block subject %}Row {{ n }} for {{ name }}{% endblock %}\n{% block text %}\nHello {{ name }}, your number is {{ n }}.\n{% endblock %}\n{% block html %}<p>Hello {{ name }}: {{ n }}</p>{% endblock %}\n";

/// A stack user whose config has the merge template; returns env, user and recipient.
fn setup(stack: &MailStack, test: &str) -> (TestEnv, String, String) {
    let (user, rcpt) = (stack.user(test), stack.user(&format!("{test}-rcpt")));
    let env = TestEnv::new();
    env.config_for_stack(
        stack,
        &user,
        (stack.ports.postfix_submission, "starttls", "xoauth2"),
        &stack.ca_file,
    );
    let dir = env.config_path().parent().expect("dir").join("templates");
    fs::create_dir_all(&dir).expect("templates dir");
    fs::write(dir.join("merge.j2"), TEMPLATE).expect("template");
    (env, user, rcpt)
}

fn csv(env: &TestEnv, rows: usize, to: &str) -> std::path::PathBuf {
    let mut text = String::from("id,to,name,n\n");
    for i in 1..=rows {
        text.push_str(&format!("r{i},{to},Name {i},{i}\n"));
    }
    let path = env.root().join(format!("rows-{rows}.csv"));
    fs::write(&path, text).expect("write csv");
    path
}

fn merge(env: &TestEnv, stack: &MailStack, data: &std::path::Path, extra: &[&str]) -> Run {
    let mut args = vec![
        "send",
        "-t",
        "merge",
        "--each",
        data.to_str().expect("utf8"),
    ];
    args.extend_from_slice(extra);
    env.run_full(
        &args,
        &[("MP_TEST_SECRET", &stack.oauth.client_secret())],
        None,
    )
}

/// Subject → Message-IDs of what `rcpt` received.
fn received(stack: &MailStack, rcpt: &str) -> Vec<(String, String)> {
    stack
        .delivered(rcpt)
        .iter()
        .map(|raw| {
            let m = MessageParser::default().parse(raw).expect("parse");
            (
                m.subject().unwrap_or_default().to_string(),
                m.message_id().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// The README's quick start works on a fresh machine with no account: the shipped daily report
/// renders with its table, HTML and attachment.
#[test]
fn quick_start_dry_run() {
    let env = TestEnv::new();
    let run = env
        .cmd(&[
            "send",
            "--dry-run",
            "--from",
            "reports@example.com",
            "--template",
            "daily-report",
            "--data",
            "examples/daily-report.json",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let msg = MessageParser::default()
        .parse(stdout.as_bytes())
        .expect("parse");
    assert_eq!(
        msg.subject(),
        Some("[production] Daily report 2026-11-27: 2/3 jobs OK")
    );
    assert!(msg
        .body_text(0)
        .expect("text")
        .contains("ingest-orders        OK      1,284,311 rows  734.0 MB"));
    assert!(msg
        .body_html(0)
        .expect("html")
        .contains("<td align=\"right\">1,284,311</td>"));
    assert_eq!(
        msg.attachments().next().and_then(|a| a.attachment_name()),
        Some("daily-report.csv")
    );
}

/// A missing variable names the file, the line and the variable; nothing is sent.
#[test]
fn missing_variable_names_file_line_and_variable() {
    let env = TestEnv::new();
    let run = env
        .cmd(&[
            "send",
            "--dry-run",
            "--from",
            "r@example.com",
            "--to",
            "a@example.com",
            "-t",
            "alert",
            "--var",
            "host=db1",
            "--var",
            "at=2026-11-27T08:00:00Z",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run");
    assert_eq!(run.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(
        stderr,
        "error: template templates/alert.j2:1: undefined variables `severity`, `summary`\n"
    );
}

/// Every invalid row is reported with its line before anything is sent; `--skip-invalid` sends
/// the valid ones and exits 1.
#[test]
fn invalid_rows_reported_up_front() {
    let stack = MailStack::get();
    let (env, user, rcpt) = setup(stack, "invalid");
    env.import_for(&stack.oauth, &user);
    let data = env.root().join("rows.csv");
    fs::write(
        &data,
        format!("id,to,name,n,attachments\nok1,{rcpt},A,1,\nbad1,not-an-address,B,2,\nbad2,{rcpt},C,3,\nbad3,{rcpt},D,4,missing.pdf\nok2,{rcpt},E,5,\n"),
    )
    .expect("csv");
    // Row 3 makes the template read a variable no row has.
    let tmpl = env
        .config_path()
        .parent()
        .expect("dir")
        .join("templates/merge.j2");
    fs::write(
        &tmpl,
        TEMPLATE.replace("{{ n }}.", "{{ n }}{% if n == '3' %}{{ nope }}{% endif %}."),
    )
    .expect("template");
    let run = merge(&env, stack, &data, &[]);
    run.expect_code(2);
    let d = data.display();
    assert!(
        run.stderr.contains(&format!(
            "warning: {d}:3: --to \"not-an-address\" is not a valid address"
        )),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains(&format!("warning: {d}:4: template ")),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("undefined variable `nope`"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains(&format!("warning: {d}:5: attachment ")),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("error: 3 of 5 rows are invalid; nothing was sent"),
        "{}",
        run.stderr
    );
    assert_eq!(
        stack.oauth.introspection_count_for(&user),
        0,
        "no login at all"
    );
    let run = merge(&env, stack, &data, &["--skip-invalid"]);
    run.expect_code(1);
    assert!(
        run.stderr
            .contains("2 sent, 0 already sent before (skipped), 3 invalid, 0 refused"),
        "{}",
        run.stderr
    );
    stack.wait_delivered(&rcpt, 2);
    std::thread::sleep(Duration::from_millis(300));
    let mut subjects: Vec<String> = received(stack, &rcpt).into_iter().map(|(s, _)| s).collect();
    subjects.sort();
    assert_eq!(
        subjects,
        ["Row 1 for A", "Row 5 for E"],
        "exactly the valid rows"
    );
}

/// 200 rows: 200 distinct messages with their own content, over one connection (one login);
/// a rerun sends nothing and says so.
#[test]
fn two_hundred_rows_one_connection() {
    let stack = MailStack::get();
    let (env, user, rcpt) = setup(stack, "m200");
    env.import_for(&stack.oauth, &user);
    let data = csv(&env, 200, &rcpt);
    let run = merge(&env, stack, &data, &["--json"]);
    run.expect_code(0);
    let summary: serde_json::Value = serde_json::from_str(&run.stdout).expect("json");
    assert_eq!(
        (summary["sent"].as_u64(), summary["sessions"].as_u64()),
        (Some(200), Some(1))
    );
    assert_eq!(
        stack.oauth.introspection_count_for(&user),
        1,
        "one AUTH for the batch"
    );
    stack.wait_delivered(&rcpt, 200);
    let got = received(stack, &rcpt);
    let mut subjects: Vec<String> = got.iter().map(|(s, _)| s.clone()).collect();
    subjects.sort();
    let mut want: Vec<String> = (1..=200).map(|i| format!("Row {i} for Name {i}")).collect();
    want.sort();
    assert_eq!(subjects, want);
    for raw in stack.delivered(&rcpt) {
        let m = MessageParser::default().parse(&raw).expect("parse");
        let n = m
            .subject()
            .expect("subject")
            .split(' ')
            .nth(1)
            .expect("n")
            .to_string();
        assert!(m
            .body_text(0)
            .expect("text")
            .contains(&format!("your number is {n}.")));
        assert!(m.message_id().expect("id").starts_with(&format!("r{n}.")));
    }
    let run = merge(&env, stack, &data, &[]);
    run.expect_code(0);
    assert!(
        run.stderr
            .contains("0 sent, 200 already sent before (skipped)"),
        "{}",
        run.stderr
    );
    assert_eq!(
        stack.oauth.introspection_count_for(&user),
        1,
        "the rerun did not even log in"
    );
}

/// A token whose real lifetime is shorter than the batch: the batch reconnects with a refreshed
/// token before it expires and completes, nothing lost or doubled.
#[test]
fn batch_outlives_token() {
    let stack = MailStack::get();
    let (env, user, rcpt) = setup(stack, "shortlived");
    let text = fs::read_to_string(env.config_path())
        .expect("config")
        .replace("token_url", "refresh_margin = \"1s\"\ntoken_url");
    env.write_config(&text);
    stack.oauth.set_policy(
        &user,
        Policy {
            expires_in: Some(3),
            real_lifetime: Some(3),
            ..Policy::default()
        },
    );
    env.import_for(&stack.oauth, &user);
    let data = csv(&env, 40, &rcpt);
    let run = merge(&env, stack, &data, &["--rate", "10/s", "--json"]);
    run.expect_code(0);
    let summary: serde_json::Value = serde_json::from_str(&run.stdout).expect("json");
    assert_eq!(summary["sent"], 40);
    assert!(
        summary["sessions"].as_u64().expect("sessions") >= 2,
        "reconnected: {summary}"
    );
    assert!(
        stack.oauth.refresh_count_for(&user) >= 2,
        "refreshed during the batch"
    );
    stack.wait_delivered(&rcpt, 40);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(stack.delivered(&rcpt).len(), 40, "nothing doubled");
}

/// A refused recipient (5xx) is recorded and the batch goes on (exit 1); a recipient the server
/// defers (4xx) is retried with backoff, then the run stops with exit 75 and the rest is left for
/// the rerun.
#[test]
fn refused_and_deferred_rows() {
    let stack = MailStack::get();
    let (env, user, rcpt) = setup(stack, "refused");
    env.import_for(&stack.oauth, &user);
    let data = env.root().join("rows.csv");
    fs::write(
        &data,
        format!("id,to,name,n\na,{rcpt},A,1\nb,x@{REJECT_DOMAIN},B,2\nc,{rcpt},C,3\n"),
    )
    .expect("csv");
    let run = merge(&env, stack, &data, &[]);
    run.expect_code(1);
    assert!(
        run.stderr.contains(":3: refused by the server: "),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("2 sent, 0 already sent before (skipped), 0 invalid, 1 refused"),
        "{}",
        run.stderr
    );
    let data = env.root().join("later.csv");
    fs::write(
        &data,
        format!("id,to,name,n\nd,{rcpt},D,4\ne,x@{DEFER_DOMAIN},E,5\nf,{rcpt},F,6\n"),
    )
    .expect("csv");
    let started = Instant::now();
    let run = merge(&env, stack, &data, &[]);
    run.expect_code(75);
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "backed off between attempts"
    );
    assert!(
        run.stderr.contains("a rerun resumes after it"),
        "{}",
        run.stderr
    );
    stack.wait_delivered(&rcpt, 3);
    std::thread::sleep(Duration::from_millis(500));
    let subjects: Vec<String> = received(stack, &rcpt).into_iter().map(|(s, _)| s).collect();
    assert_eq!(subjects.len(), 3, "rows a, c, d only: {subjects:?}");
    assert!(!subjects.iter().any(|s| s.contains("Row 6")));
}

/// `kill -9` at five random moments of a 500-row batch, then a rerun to the end: every row is
/// delivered, at most one duplicate per kill, and each duplicate has its twin's Message-ID.
#[test]
fn killed_batches_lose_nothing() {
    let stack = MailStack::get();
    let (env, user, rcpt) = setup(stack, "kill9");
    env.import_for(&stack.oauth, &user);
    let data = csv(&env, 500, &rcpt);
    let journal_lines = || -> usize {
        fs::read_dir(env.state_dir().join("journal"))
            .map(|d| {
                d.flatten()
                    .filter(|e| e.path().extension().is_some_and(|x| x == "jsonl"))
                    .map(|e| {
                        fs::read_to_string(e.path())
                            .unwrap_or_default()
                            .lines()
                            .count()
                    })
                    .sum()
            })
            .unwrap_or(0)
    };
    // Deterministic "random" kill points: after 10 to 80 more journaled messages (a moment in
    // the middle of the batch however fast the machine sends), plus up to 3 ms.
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id());
    let mut kills = 0;
    for _ in 0..5 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let target = journal_lines() + 10 + (seed % 71) as usize;
        let extra = Duration::from_micros(seed % 3000);
        let mut child = env
            .cmd(&[
                "send",
                "-t",
                "merge",
                "--each",
                data.to_str().expect("utf8"),
            ])
            .env("MP_TEST_SECRET", stack.oauth.client_secret())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while journal_lines() < target
            && std::time::Instant::now() < deadline
            && child.try_wait().expect("try_wait").is_none()
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(extra);
        if child.try_wait().expect("try_wait").is_none() {
            child.kill().expect("SIGKILL");
            kills += 1;
        }
        child.wait().expect("reap");
    }
    let journaled = journal_lines();
    assert!(
        kills >= 3 && journaled < 500,
        "the kills interrupted the batch ({kills} kills, {journaled} journaled)"
    );
    let run = merge(&env, stack, &data, &[]);
    run.expect_code(0);
    assert_eq!(journal_lines(), 500);
    stack.wait_delivered(&rcpt, 500);
    std::thread::sleep(Duration::from_secs(1));
    let mut by_id: HashMap<String, Vec<String>> = HashMap::new();
    for (subject, id) in received(stack, &rcpt) {
        by_id.entry(id).or_default().push(subject);
    }
    assert_eq!(by_id.len(), 500, "every row delivered");
    let duplicates: usize = by_id.values().map(|v| v.len() - 1).sum();
    assert!(
        duplicates <= kills,
        "{duplicates} duplicates for {kills} kills"
    );
    for (id, subjects) in &by_id {
        assert!(
            subjects.iter().all(|s| s == &subjects[0]),
            "Message-ID {id} names one row: {subjects:?}"
        );
    }
}

/// The server drops the connection in the middle of a batch: mailpilot reconnects and completes;
/// nothing is lost and at most the message in flight is doubled (with the same Message-ID).
#[test]
fn dropped_connection_mid_batch() {
    let stack = MailStack::get();
    let (env, user, rcpt) = setup(stack, "dropped");
    let proxy =
        crate::support::proxy::DroppingProxy::start(stack.ports.postfix_submissions, 30_000);
    env.config_for_stack(
        stack,
        &user,
        (proxy.port, "implicit", "xoauth2"),
        &stack.ca_file,
    );
    env.import_for(&stack.oauth, &user);
    let data = csv(&env, 60, &rcpt);
    let run = merge(&env, stack, &data, &["--json"]);
    run.expect_code(0);
    let summary: serde_json::Value = serde_json::from_str(&run.stdout).expect("json");
    assert_eq!(summary["sent"], 60);
    assert!(proxy.connections() >= 2, "reconnected after the drop");
    assert!(summary["sessions"].as_u64().expect("sessions") >= 2);
    stack.wait_delivered(&rcpt, 60);
    std::thread::sleep(Duration::from_millis(500));
    let mut by_id: HashMap<String, usize> = HashMap::new();
    for (_, id) in received(stack, &rcpt) {
        *by_id.entry(id).or_default() += 1;
    }
    assert_eq!(by_id.len(), 60, "every row delivered");
    assert!(by_id.values().sum::<usize>() <= 61, "at most one doubled");
}

/// One templated message with `--data` (which may name recipients and attachments) and `--var`
/// is rendered and delivered.
#[test]
fn templated_single_message() {
    let stack = MailStack::get();
    let (env, user, rcpt) = setup(stack, "single");
    env.import_for(&stack.oauth, &user);
    fs::write(env.root().join("table.csv"), "a,b\n1,2\n").expect("attachment");
    let data = env.root().join("vars.json");
    fs::write(
        &data,
        format!(r#"{{"to": "{rcpt}", "attachments": ["table.csv"], "name": "Ann", "n": 7}}"#),
    )
    .expect("json");
    let run = env.run_full(
        &[
            "send",
            "-t",
            "merge",
            "--data",
            data.to_str().expect("utf8"),
            "--var",
            "name=Bob",
        ],
        &[("MP_TEST_SECRET", &stack.oauth.client_secret())],
        None,
    );
    run.expect_code(0);
    let raw = stack.wait_delivered(&rcpt, 1).remove(0);
    let m = MessageParser::default().parse(&raw).expect("parse");
    assert_eq!(m.subject(), Some("Row 7 for Bob"), "--var wins over --data");
    assert!(m
        .body_html(0)
        .expect("html")
        .contains("<p>Hello Bob: 7</p>"));
    assert_eq!(
        m.attachments().next().map(|a| a.contents()),
        Some(&b"a,b\n1,2\n"[..])
    );
}

/// A paced batch dates each message when it is sent, not when the batch started.
#[test]
fn paced_messages_are_dated_when_sent() {
    let stack = MailStack::get();
    let (env, user, rcpt) = setup(stack, "dated");
    env.import_for(&stack.oauth, &user);
    let data = csv(&env, 2, &rcpt);
    merge(&env, stack, &data, &["--rate", "1/s"]).expect_code(0);
    let mut dates: Vec<i64> = stack
        .wait_delivered(&rcpt, 2)
        .iter()
        .map(|raw| {
            MessageParser::default()
                .parse(raw)
                .and_then(|m| m.date().map(|d| d.to_timestamp()))
                .expect("a Date header")
        })
        .collect();
    dates.sort_unstable();
    assert!(
        dates[1] - dates[0] >= 1,
        "the second message was sent a second later: {dates:?}"
    );
}
