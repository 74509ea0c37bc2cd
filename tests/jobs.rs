//! Scheduled jobs: `run`, `daemon`, `jobs`, `status`, on_failure, and the cron/systemd text.

use std::fs;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{MailStack, TestEnv};

/// A stack account plus `jobs` appended to its config.
fn setup(stack: &MailStack, test: &str, jobs: &str) -> (TestEnv, String, String) {
    let (env, user) = TestEnv::for_mailbox(stack, test);
    let rcpt = stack.user(&format!("{test}-rcpt"));
    let text = fs::read_to_string(env.config_path()).expect("config");
    env.write_config(&format!(
        "{text}\n{}",
        jobs.replace("RCPT", &rcpt)
            .replace("ROOT", &env.root().display().to_string())
    ));
    env.import_for(&stack.oauth, &user);
    (env, user, rcpt)
}

fn term(child: Child) -> (Option<i32>, String) {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    let out = child.wait_with_output().expect("wait");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The daemon runs a 1-second send job and a poll job for a few cycles: each cycle's mail arrives
/// once, every delivered message is handled once, runs of one job never overlap, SIGTERM → 0.
#[test]
fn daemon_runs_jobs_on_their_clock() {
    let stack = MailStack::get();
    let jobs = r#"
[jobs.ping]
kind = "send"
every = "1s"
to = ["RCPT"]
subject = "ping"
text = "still alive"

[jobs.inbox]
kind = "poll"
every = "1s"
from_now = true
exec = "echo \"$MAILPILOT_SUBJECT\" >> ROOT/handled; sleep 1.2"
"#;
    let (env, user, rcpt) = setup(stack, "daemon", jobs);
    let daemon = env.spawn_with_secret(&stack.oauth, &["daemon"]);
    std::thread::sleep(Duration::from_millis(1500));
    stack.deliver(&user, "INBOX", "d1");
    std::thread::sleep(Duration::from_millis(1500));
    stack.deliver(&user, "INBOX", "d2");
    let deadline = Instant::now() + Duration::from_secs(20);
    while fs::read_to_string(env.root().join("handled"))
        .unwrap_or_default()
        .lines()
        .count()
        < 2
    {
        assert!(
            Instant::now() < deadline,
            "the poll job did not handle both messages"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (code, stderr) = term(daemon);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        fs::read_to_string(env.root().join("handled")).expect("handled"),
        "d1\nd2\n",
        "each once"
    );
    let pings = stderr.matches("job=ping event=end outcome=ok").count();
    assert!(pings >= 3, "several cycles: {stderr}");
    stack.wait_delivered(&rcpt, pings);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        stack.delivered(&rcpt).len(),
        pings,
        "each cycle's mail arrives once"
    );
    // Runs of one job never overlap: its start/end lines alternate.
    let events: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("job=inbox event="))
        .map(|l| {
            if l.contains("event=start") {
                "start"
            } else {
                "end"
            }
        })
        .collect();
    assert!(
        events
            .chunks(2)
            .all(|c| c == ["start", "end"] || c == ["start"]),
        "{events:?}"
    );
}

/// Two `run NAME` started together: one runs, the other exits 75 at once.
#[test]
fn overlapping_runs_exit_75() {
    let stack = MailStack::get();
    let jobs = r#"
[jobs.slow]
kind = "poll"
all = true
exec = "sleep 2"
"#;
    let (env, user, _) = setup(stack, "overlap", jobs);
    stack.deliver(&user, "INBOX", "x");
    let first = env.spawn_with_secret(&stack.oauth, &["run", "slow"]);
    std::thread::sleep(Duration::from_millis(700));
    let second = env.run_full(
        &["run", "slow"],
        &[("MP_TEST_SECRET", &stack.oauth.client_secret())],
        None,
    );
    second.expect_code(75);
    assert!(
        second
            .stderr
            .starts_with("error: job slow is already running; this run exits"),
        "{}",
        second.stderr
    );
    let out = first.wait_with_output().expect("wait");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let jobs = env.run(&["jobs", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&jobs.stdout).expect("json");
    assert_eq!(v["jobs"][0]["last_run"]["exit_code"], 0);
}

/// SIGTERM while the daemon runs a merge job: the job completes (or stops at a message
/// boundary), its journal is consistent, and the daemon exits 0.
#[test]
fn sigterm_during_merge_job() {
    let stack = MailStack::get();
    let jobs = r#"
[jobs.merge]
kind = "send"
every = "1h"
template = "m"
each = "ROOT/rows.csv"
"#;
    let (env, _user, rcpt) = setup(stack, "daemonmerge", jobs);
    let dir = env.config_path().parent().expect("dir").join("templates");
    fs::create_dir_all(&dir).expect("dir");
    fs::write(
        dir.join("m.j2"),
        "{% block subject %}row {{ n }}{% endblock %}{% block text %}x{% endblock %}",
    )
    .expect("template");
    let mut csv = String::from("to,n\n");
    for i in 0..300 {
        csv.push_str(&format!("{rcpt},{i}\n"));
    }
    fs::write(env.root().join("rows.csv"), csv).expect("csv");
    let daemon = env.spawn_with_secret(&stack.oauth, &["daemon"]);
    std::thread::sleep(Duration::from_millis(800));
    let (code, stderr) = term(daemon);
    assert_eq!(code, Some(0), "{stderr}");
    let journal_dir = env.state_dir().join("journal");
    let journal: String = fs::read_dir(&journal_dir)
        .expect("journal dir")
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "jsonl"))
        .map(|e| fs::read_to_string(e.path()).expect("journal"))
        .collect();
    assert!(journal.ends_with('\n'), "no torn line");
    let entries = journal.lines().count();
    assert!(entries > 0, "{stderr}");
    for line in journal.lines() {
        serde_json::from_str::<serde_json::Value>(line)
            .expect("every journal line is complete JSON");
    }
    stack.wait_delivered(&rcpt, entries);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        stack.delivered(&rcpt).len(),
        entries,
        "journal and mailbox agree"
    );
}

/// A job whose grant was revoked runs on_failure with the reason; `status` exits 77 naming the
/// account and the job.
#[test]
fn on_failure_and_status() {
    let stack = MailStack::get();
    let jobs = r#"
[jobs.report]
kind = "send"
to = ["RCPT"]
subject = "report"
text = "x"
on_failure = "env | grep ^MAILPILOT_ > ROOT/failure"
"#;
    let (env, user, _) = setup(stack, "onfail", jobs);
    let ok = env.run_full(&["status"], &[], None);
    ok.expect_code(0);
    assert_eq!(ok.stdout, "account work: ok\njob report: never-run\n");
    stack.oauth.revoke_user(&user);
    let run = env.run_full(
        &["run", "report"],
        &[("MP_TEST_SECRET", &stack.oauth.client_secret())],
        None,
    );
    run.expect_code(77);
    let failure = fs::read_to_string(env.root().join("failure")).expect("on_failure ran");
    assert!(failure.contains("MAILPILOT_JOB=report"), "{failure}");
    assert!(failure.contains("MAILPILOT_EXIT_CODE=77"), "{failure}");
    assert!(
        failure.contains("needs authorization") && failure.contains("invalid_grant"),
        "{failure}"
    );
    let status = env.run(&["status"]);
    status.expect_code(77);
    assert!(
        status.stdout.contains("account work: needs-authorization"),
        "{}",
        status.stdout
    );
    assert!(
        status.stdout.contains("job report: failed exit 77"),
        "{}",
        status.stdout
    );
}

/// Job tables are checked like command lines, with their key paths.
#[test]
fn job_validation() {
    let env = TestEnv::new();
    env.write_config(
        "[accounts.work]\nprovider = \"google\"\nemail = \"a@example.com\"\nclient_id = \"id\"\n\n[jobs.a]\nkind = \"sned\"\n\n[jobs.b]\nkind = \"send\"\nschedule = \"every day\"\n\n[jobs.c]\nkind = \"poll\"\nmailbx = \"INBOX\"\n",
    );
    let run = env.run(&["config", "check"]);
    run.expect_code(2);
    assert!(run.stderr.contains("jobs.a.kind: unknown value \"sned\" (expected one of \"send\", \"poll\"; did you mean \"send\"?)"), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("jobs.b.schedule: \"every day\" is not a cron expression"),
        "{}",
        run.stderr
    );
    env.write_config("[accounts.work]\nprovider = \"google\"\nemail = \"a@example.com\"\nclient_id = \"id\"\n\n[jobs.c]\nkind = \"poll\"\nmailbx = \"INBOX\"\n");
    let run = env.run(&["config", "check"]);
    run.expect_code(2);
    assert!(
        run.stderr
            .contains("jobs.c: unexpected argument '--mailbx' found"),
        "{}",
        run.stderr
    );
}

/// The crontab and systemd text in the README is what the commands print.
#[test]
fn readme_schedule_examples_are_generated() {
    let env = TestEnv::new();
    env.write_config(
        &fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/config.toml"))
            .expect("example"),
    );
    let config = env.config_path().display().to_string();
    let fix = |s: String| s.replace(&config, "/etc/mailpilot/config.toml");
    let cron = fix(env
        .run(&[
            "schedule",
            "print-cron",
            "--bin",
            "/usr/local/bin/mailpilot",
        ])
        .stdout);
    let systemd = fix(env
        .run(&[
            "schedule",
            "print-systemd",
            "daily-report",
            "--bin",
            "/usr/local/bin/mailpilot",
        ])
        .stdout);
    let readme =
        fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README");
    let block = |marker: &str| -> String {
        let start = readme
            .find(&format!("<!-- {marker} -->"))
            .unwrap_or_else(|| panic!("README lacks <!-- {marker} -->"));
        let body = &readme[start..];
        let code = &body[body.find("```").expect("fence")..];
        let code = &code[code.find('\n').expect("newline") + 1..];
        code[..code.find("```").expect("closing fence")].to_string()
    };
    assert_eq!(block("print-cron"), cron);
    assert_eq!(block("print-systemd"), systemd);
}

/// SIGHUP reloads the configuration: a job added to the file starts running; a broken file is
/// reported and the old configuration kept.
#[test]
fn sighup_reloads_config() {
    let env = TestEnv::new();
    let base =
        "[accounts.work]\nprovider = \"google\"\nemail = \"a@example.com\"\nclient_id = \"id\"\n";
    env.write_config(base);
    let mut daemon = env
        .cmd(&["daemon"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let hup = |child: &Child| {
        Command::new("kill")
            .args(["-HUP", &child.id().to_string()])
            .status()
            .expect("kill -HUP")
    };
    std::thread::sleep(Duration::from_millis(500));
    env.write_config(&format!(
        "{base}\n[jobs.hello]\nkind = \"send\"\nevery = \"1s\"\ndry_run = true\nfrom = \"a@example.com\"\nto = [\"b@example.com\"]\nsubject = \"hello\"\ntext = \"x\"\n"
    ));
    hup(&daemon);
    std::thread::sleep(Duration::from_millis(1800));
    env.write_config("[accounts.work]\nprovider = \"gogle\"\n");
    hup(&daemon);
    std::thread::sleep(Duration::from_millis(1500));
    let stdout = daemon.stdout.take().expect("stdout");
    let (code, stderr) = term(daemon);
    let mut out = String::new();
    std::io::Read::read_to_string(&mut { stdout }, &mut out).expect("read stdout");
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("daemon started: 0 scheduled jobs"),
        "{stderr}"
    );
    assert!(
        stderr.contains("configuration reloaded: 1 scheduled jobs"),
        "{stderr}"
    );
    assert!(
        stderr.contains("configuration not reloaded, keeping the old one"),
        "{stderr}"
    );
    let after_broken = &stderr[stderr.find("configuration not reloaded").expect("warning")..];
    assert!(
        after_broken.contains("job=hello event=end outcome=ok"),
        "jobs keep the old configuration: {stderr}"
    );
    assert!(!after_broken.contains("outcome=config-error"), "{stderr}");
    let runs = out.matches("Subject: hello").count();
    assert!(
        runs >= 3,
        "the added job ran every second, also after the broken reload ({runs} runs)\n{stderr}"
    );
}
