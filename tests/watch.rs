//! `mailpilot watch` against the real Dovecot: IDLE, reconnects (token expiry, dropped
//! connections), the no-IDLE fallback, and a clean stop on SIGTERM.

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::proxy::DroppingProxy;
use crate::support::{MailStack, Policy, TestEnv};

fn start_watch(env: &TestEnv, stack: &MailStack, log: &Path, extra: &[&str]) -> Child {
    let exec = format!("echo \"$MAILPILOT_SUBJECT\" >> {}", log.display());
    let mut args = vec!["watch", "--from-now", "--exec", &exec];
    args.extend_from_slice(extra);
    env.cmd(&args)
        .env("MP_TEST_SECRET", stack.oauth.client_secret())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn watch")
}

fn wait_for_lines(log: &Path, n: usize, within: Duration) -> Vec<String> {
    let deadline = Instant::now() + within;
    loop {
        let lines: Vec<String> = fs::read_to_string(log)
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect();
        if lines.len() >= n {
            return lines;
        }
        assert!(Instant::now() < deadline, "only {lines:?} after {within:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SIGTERM, then the exit status and stderr.
fn stop(child: Child) -> (Option<i32>, String) {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill -TERM");
    let out = child.wait_with_output().expect("wait");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Wait until watch has connected and is idle (its first pass is done): it logged in and wrote its
/// starting checkpoint (a `--from-now` start taken after a test's delivery would skip that mail).
fn wait_until_watching(env: &TestEnv, stack: &MailStack, user: &str, logins: u64) {
    let deadline = Instant::now() + Duration::from_secs(15);
    let checkpoint = env.state_dir().join("poll/work/INBOX.json");
    while stack.oauth.introspection_count_for(user) < logins || !checkpoint.exists() {
        assert!(Instant::now() < deadline, "watch never logged in");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
}

/// New mail is handled within moments through IDLE, each message once; SIGTERM stops it with
/// exit 0.
#[test]
fn idle_handles_new_mail_and_stops_cleanly() {
    let stack = MailStack::get();
    let (env, user) = TestEnv::for_mailbox(stack, "watchidle");
    env.import_for(&stack.oauth, &user);
    let log = env.root().join("log");
    let child = start_watch(&env, stack, &log, &[]);
    wait_until_watching(&env, stack, &user, 1);
    let started = Instant::now();
    stack.deliver(&user, "INBOX", "w1");
    assert_eq!(wait_for_lines(&log, 1, Duration::from_secs(10)), ["w1"]);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "IDLE reported it at once"
    );
    stack.deliver(&user, "INBOX", "w2");
    stack.deliver(&user, "INBOX", "w3");
    assert_eq!(
        wait_for_lines(&log, 3, Duration::from_secs(10)),
        ["w1", "w2", "w3"]
    );
    let (code, stderr) = stop(child);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("stopped; 3 messages handled"), "{stderr}");
    assert_eq!(
        stack.oauth.introspection_count_for(&user),
        1,
        "one login for all of it"
    );
}

/// A token that expires soon makes watch reconnect with a fresh token before it expires, and
/// mail keeps being handled once.
#[test]
fn reconnects_before_token_expiry() {
    let stack = MailStack::get();
    let (env, user) = TestEnv::for_mailbox(stack, "watchexpiry");
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
    let log = env.root().join("log");
    let child = start_watch(&env, stack, &log, &[]);
    wait_until_watching(&env, stack, &user, 1);
    std::thread::sleep(Duration::from_secs(5));
    stack.deliver(&user, "INBOX", "after-reconnect");
    assert_eq!(
        wait_for_lines(&log, 1, Duration::from_secs(10)),
        ["after-reconnect"]
    );
    let (code, stderr) = stop(child);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stack.oauth.introspection_count_for(&user) >= 3,
        "logged in again as tokens neared expiry"
    );
    assert!(
        stack.oauth.refresh_count_for(&user) >= 3,
        "with fresh tokens"
    );
    assert!(
        !stderr.contains("AccessTokenExpired") && !stderr.contains("error"),
        "{stderr}"
    );
}

/// The server drops the connection: watch reconnects with backoff, polls once, and the message
/// that arrived meanwhile is handled exactly once.
#[test]
fn reconnects_after_dropped_connection() {
    let stack = MailStack::get();
    let (env, user) = TestEnv::for_mailbox(stack, "watchdrop");
    let proxy = DroppingProxy::start_timed(stack.ports.imaps, Duration::from_secs(2));
    let text = fs::read_to_string(env.config_path())
        .expect("config")
        .replace(
            &format!("port = {}\ntls = \"implicit\"", stack.ports.imaps),
            &format!("port = {}\ntls = \"implicit\"", proxy.port),
        );
    env.write_config(&text);
    env.import_for(&stack.oauth, &user);
    let log = env.root().join("log");
    let child = start_watch(&env, stack, &log, &[]);
    wait_until_watching(&env, stack, &user, 1);
    std::thread::sleep(Duration::from_millis(2100)); // the cut happens now
    stack.deliver(&user, "INBOX", "while-away");
    assert_eq!(
        wait_for_lines(&log, 1, Duration::from_secs(15)),
        ["while-away"]
    );
    assert!(proxy.connections() >= 2, "reconnected");
    stack.deliver(&user, "INBOX", "later");
    assert_eq!(
        wait_for_lines(&log, 2, Duration::from_secs(10)),
        ["while-away", "later"]
    );
    let (code, stderr) = stop(child);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("reconnecting in"), "{stderr}");
}

/// Without IDLE (`--no-idle`, as for a server lacking it) watch checks every --poll-interval.
#[test]
fn polls_without_idle() {
    let stack = MailStack::get();
    let (env, user) = TestEnv::for_mailbox(stack, "watchnoidle");
    env.import_for(&stack.oauth, &user);
    let log = env.root().join("log");
    let child = start_watch(&env, stack, &log, &["--no-idle", "--poll-interval", "1s"]);
    wait_until_watching(&env, stack, &user, 1);
    stack.deliver(&user, "INBOX", "p1");
    assert_eq!(wait_for_lines(&log, 1, Duration::from_secs(10)), ["p1"]);
    let (code, stderr) = stop(child);
    assert_eq!(code, Some(0), "{stderr}");
}

/// SIGTERM while a message is being handled: that message is finished and checkpointed, then
/// watch exits 0; the next poll does not hand it over again.
#[test]
fn sigterm_finishes_message_in_hand() {
    let stack = MailStack::get();
    let (env, user) = TestEnv::for_mailbox(stack, "watchterm");
    env.import_for(&stack.oauth, &user);
    let log = env.root().join("log");
    let exec = format!(
        "echo start >> {l}; sleep 2; echo \"$MAILPILOT_SUBJECT\" >> {l}",
        l = log.display()
    );
    let child = env
        .cmd(&["watch", "--from-now", "--exec", &exec])
        .env("MP_TEST_SECRET", stack.oauth.client_secret())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn watch");
    wait_until_watching(&env, stack, &user, 1);
    stack.deliver(&user, "INBOX", "in-hand");
    wait_for_lines(&log, 1, Duration::from_secs(10));
    let (code, stderr) = stop(child);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(fs::read_to_string(&log).expect("log"), "start\nin-hand\n");
    let run = env.run_full(
        &["poll"],
        &[("MP_TEST_SECRET", &stack.oauth.client_secret())],
        None,
    );
    run.expect_code(0);
    assert!(
        run.stdout.is_empty(),
        "checkpointed before exit: {}",
        run.stdout
    );
}

/// With the state in PostgreSQL, a watch holds its mailbox lock in a database session; when the
/// database restarts, that lock goes with the session: the watch notices, takes it again, and
/// goes on handling mail once (nothing missed, nothing twice).
#[test]
fn database_restart_retakes_the_lock() {
    let stack = MailStack::get();
    let pg = crate::support::postgres::PgServer::start();
    let (env, user) = TestEnv::for_mailbox(stack, "watchpg");
    env.import_for(&stack.oauth, &user);
    let state = pg.state_config("watch", &env.root().join("db-password"));
    let text = fs::read_to_string(env.config_path()).expect("config");
    env.write_config(&format!("{state}{text}"));
    env.run(&["state", "init"]).expect_code(0);
    env.run(&["state", "migrate", "--from", "files", "--to", "postgres"])
        .expect_code(0);
    let log = env.root().join("log");
    let child = start_watch(&env, stack, &log, &[]);
    let deadline = Instant::now() + Duration::from_secs(15);
    let checkpoint = "SELECT count(*) FROM watch.records WHERE kind = 'poll'";
    while pg.psql("mailpilot", checkpoint).trim() != "1" {
        assert!(Instant::now() < deadline, "watch never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    stack.deliver(&user, "INBOX", "w1");
    assert_eq!(wait_for_lines(&log, 1, Duration::from_secs(10)), ["w1"]);
    pg.stop();
    std::thread::sleep(Duration::from_secs(1));
    pg.resume();
    stack.deliver(&user, "INBOX", "w2");
    stack.deliver(&user, "INBOX", "w3");
    assert_eq!(
        wait_for_lines(&log, 3, Duration::from_secs(20)),
        ["w1", "w2", "w3"]
    );
    std::thread::sleep(Duration::from_millis(500));
    let (code, stderr) = stop(child);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("was lost with its database session"),
        "{stderr}"
    );
    assert_eq!(
        fs::read_to_string(&log).expect("log").lines().count(),
        3,
        "each message once"
    );
}
