//! `mailpilot sendmail` and `mailpilot queue` against the real Postfix and Dovecot: the argument
//! lists real programs pass, local names through aliases, From rewritten, and the outbox keeping a
//! message through a server outage and a permanent refusal.

use std::fs;

use mail_parser::MessageParser;

use crate::support::mailstack::{free_port, REJECT_DOMAIN};
use crate::support::{MailStack, Run, TestEnv};

/// Points the account's SMTP server from the closed port back at the real one.
fn server_back(env: &TestEnv, closed: u16, real: u16) {
    let text = fs::read_to_string(env.config_path()).expect("config");
    env.write_config(&text.replace(&format!("port = {closed}"), &format!("port = {real}")));
}

/// Starts `mailpilot ARGS` (the daemon) in `env`.
/// Makes the cached access token expired, so the next send must refresh.
fn expire_token(env: &TestEnv) {
    let mut token = env.token_json("work");
    token["expires_at"] = serde_json::json!(1);
    let bytes = serde_json::to_vec_pretty(&token).expect("json");
    fs::write(env.token_file("work"), bytes).expect("expire the token");
}

fn sendmail(env: &TestEnv, stack: &MailStack, args: &[&str], message: &str) -> Run {
    let mut all = vec!["sendmail"];
    all.extend_from_slice(args);
    env.run_full(
        &all,
        &[("MP_TEST_SECRET", &stack.oauth.client_secret())],
        Some(message),
    )
}

fn queue(env: &TestEnv, stack: &MailStack, args: &[&str]) -> Run {
    let mut all = vec!["queue"];
    all.extend_from_slice(args);
    env.run_full(
        &all,
        &[("MP_TEST_SECRET", &stack.oauth.client_secret())],
        None,
    )
}

fn queued(env: &TestEnv, stack: &MailStack) -> Vec<serde_json::Value> {
    let run = queue(env, stack, &["list", "--json"]);
    run.expect_code(0);
    let doc: serde_json::Value = serde_json::from_str(&run.stdout).expect("JSON");
    doc["messages"].as_array().cloned().unwrap_or_default()
}

/// Debian cron's exact argument list delivers cron's message to the alias of `root`, From
/// rewritten to the account with cron's name kept; cronie's (-t) does too, through a binary run
/// under the name `sendmail`.
#[test]
fn cron_and_cronie_deliver() {
    let stack = MailStack::get();
    let (env, user, rcpt) = TestEnv::for_sendmail(stack, "smcron", stack.ports.postfix_submission);
    let message = "From: root (Cron Daemon)\nTo: root\nSubject: Cron <root@vm> run-parts /etc/cron.daily\n\nall fine\n";
    sendmail(
        &env,
        stack,
        &["-FCronDaemon", "-i", "-B8BITMIME", "-oem", "root"],
        message,
    )
    .expect_code(0);
    let link = env.root().join("sendmail");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_mailpilot"), &link).expect("symlink");
    let run = env.run_via(
        &link,
        &[
            "-FCronDaemon",
            "-i",
            "-odi",
            "-oem",
            "-oi",
            "-t",
            "-f",
            "root",
        ],
        &[("MP_TEST_SECRET", &stack.oauth.client_secret())],
        Some("To: root\nSubject: cronie\n\nfrom cronie\n"),
    );
    run.expect_code(0);
    let delivered = stack.wait_delivered(&rcpt, 2);
    let parsed: Vec<_> = delivered
        .iter()
        .map(|raw| MessageParser::default().parse(raw).expect("parse"))
        .collect();
    let first = parsed
        .iter()
        .find(|m| m.subject().is_some_and(|s| s.starts_with("Cron")))
        .expect("cron's message");
    let from = first.from().and_then(|f| f.first()).expect("From");
    assert_eq!(from.address(), Some(user.as_str()));
    assert_eq!(from.name(), Some("CronDaemon"));
    assert!(first.date().is_some() && first.message_id().is_some());
    assert!(parsed.iter().any(|m| m.subject() == Some("cronie")));
    assert!(queued(&env, stack).is_empty(), "nothing left in the outbox");
    let locks = fs::read_dir(env.state_dir().join("outbox/locks"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(locks, 0, "no lock file outlives its message");
}

/// mail(1) (s-nail, which runs its MTA as `-i -- root` with no From) and PHP's `mail()` (`-t -i`,
/// its own From) deliver: the first From becomes the account's, the second is kept.
#[test]
fn mail_and_php_deliver() {
    use std::process::{Command, Stdio};
    let stack = MailStack::get();
    let (env, user, rcpt) = TestEnv::for_sendmail(stack, "smmailx", stack.ports.postfix_submission);
    let link = env.root().join("sendmail");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_mailpilot"), &link).expect("symlink");
    // s-nail with the test environment (HOME, XDG dirs) that its MTA, mailpilot, needs.
    let base = env.cmd(&[]);
    let mut child = Command::new("s-nail")
        .env_clear()
        .envs(base.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .env("MP_TEST_SECRET", stack.oauth.client_secret())
        .args([
            "-:/",
            "-S",
            &format!("mta={}", link.display()),
            "-S",
            "sendwait",
        ])
        .args(["-s", "from mailx", "root"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("s-nail (installed by scripts/install-test-deps.sh)");
    use std::io::Write as _;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"sent by mail(1)\n")
        .expect("write");
    let out = child.wait_with_output().expect("s-nail");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let php = format!("To: {rcpt}\nFrom: Shop <shop@example.com>\nSubject: from php\n\norder 17\n");
    sendmail(&env, stack, &["-t", "-i"], &php).expect_code(0);
    let delivered = stack.wait_delivered(&rcpt, 2);
    let from_of = |subject: &str| {
        delivered
            .iter()
            .map(|raw| MessageParser::default().parse(raw).expect("parse"))
            .find(|m| m.subject() == Some(subject))
            .and_then(|m| {
                m.from()
                    .and_then(|f| f.first())
                    .and_then(|a| a.address().map(str::to_string))
            })
            .unwrap_or_else(|| panic!("no message {subject:?}"))
    };
    assert_eq!(from_of("from mailx"), user);
    assert_eq!(from_of("from php"), "shop@example.com");
}

/// With the SMTP server unreachable, sendmail still exits 0 and says the message is queued; after
/// the server is back, `queue flush` delivers it exactly once.
#[test]
fn outage_queues_then_flush_delivers_once() {
    let stack = MailStack::get();
    let closed = free_port();
    let (env, user, rcpt) = TestEnv::for_sendmail(stack, "smdown", closed);
    let run = sendmail(&env, stack, &["root"], "Subject: while down\n\nqueued\n");
    run.expect_code(0);
    assert!(run.stderr.contains("not sent yet"), "{}", run.stderr);
    assert!(
        run.stderr.contains("mailpilot queue flush"),
        "{}",
        run.stderr
    );
    let waiting = queued(&env, stack);
    assert_eq!(waiting.len(), 1);
    assert_eq!(waiting[0]["status"], "queued");
    assert_eq!(waiting[0]["attempts"], 1);
    assert_eq!(waiting[0]["from"], user.as_str());
    server_back(&env, closed, stack.ports.postfix_submission);
    queue(&env, stack, &["flush"]).expect_code(0);
    queue(&env, stack, &["flush"]).expect_code(0);
    assert_eq!(stack.wait_delivered(&rcpt, 1).len(), 1);
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(stack.delivered(&rcpt).len(), 1, "delivered once");
    assert!(queued(&env, stack).is_empty());
}

/// With the token endpoint down (the cached token has expired, the refresh cannot reach it),
/// sendmail exits 0 and keeps the message; once the endpoint is back, `queue flush` refreshes and
/// delivers it once, and the grant is intact.
#[test]
fn token_endpoint_down_queues() {
    let stack = MailStack::get();
    let (env, _user, rcpt) =
        TestEnv::for_sendmail(stack, "smtoken", stack.ports.postfix_submission);
    expire_token(&env);
    let real = stack.oauth.token_url();
    let down = format!("http://127.0.0.1:{}/token", free_port());
    let text = fs::read_to_string(env.config_path()).expect("config");
    env.write_config(&text.replace(&real, &down));
    let run = sendmail(&env, stack, &["root"], "Subject: no token yet\n\nkept\n");
    run.expect_code(0);
    assert!(run.stderr.contains("not sent yet"), "{}", run.stderr);
    assert_eq!(queued(&env, stack).len(), 1);
    let text = fs::read_to_string(env.config_path()).expect("config");
    env.write_config(&text.replace(&down, &real));
    queue(&env, stack, &["flush"]).expect_code(0);
    assert_eq!(stack.wait_delivered(&rcpt, 1).len(), 1);
    assert!(queued(&env, stack).is_empty());
    assert!(
        env.token_json("work")["expires_at"].as_u64().unwrap_or(0) > 1,
        "refreshed"
    );
}

/// A revoked grant (exit 77 for other commands) keeps the message queued and sendmail says which
/// login fixes it; after the person signs in again, `queue flush` delivers it.
#[test]
fn revoked_grant_keeps_the_message() {
    let stack = MailStack::get();
    let (env, user, rcpt) =
        TestEnv::for_sendmail(stack, "smrevoked", stack.ports.postfix_submission);
    expire_token(&env);
    stack.oauth.revoke_user(&user);
    let run = sendmail(
        &env,
        stack,
        &["root"],
        "Subject: after revocation\n\nkept\n",
    );
    run.expect_code(0);
    assert!(
        run.stderr.contains("mailpilot auth login work"),
        "{}",
        run.stderr
    );
    assert_eq!(queued(&env, stack).len(), 1);
    queue(&env, stack, &["flush"]).expect_code(77);
    env.import_for(&stack.oauth, &user);
    queue(&env, stack, &["flush"]).expect_code(0);
    assert_eq!(stack.wait_delivered(&rcpt, 1).len(), 1);
}

/// A message queued while the server is unreachable is delivered by a running daemon once the
/// server is back (the daemon tries the whole outbox when it starts), exactly once; a message
/// handed to sendmail while the daemon runs goes out too. `status` reports the waiting message.
#[test]
fn daemon_drains_the_outbox() {
    let stack = MailStack::get();
    let closed = free_port();
    let (env, _user, rcpt) = TestEnv::for_sendmail(stack, "smdaemon", closed);
    sendmail(&env, stack, &["root"], "Subject: first\n\nqueued\n").expect_code(0);
    let status = env.run_full(
        &["status", "--json"],
        &[("MP_TEST_SECRET", &stack.oauth.client_secret())],
        None,
    );
    let doc: serde_json::Value = serde_json::from_str(&status.stdout).expect("status JSON");
    assert_eq!(doc["outbox"]["queued"], 1, "{}", status.stdout);
    server_back(&env, closed, stack.ports.postfix_submission);
    let daemon = env.spawn_with_secret(&stack.oauth, &["daemon"]);
    stack.wait_delivered(&rcpt, 1);
    sendmail(
        &env,
        stack,
        &["root"],
        "Subject: second\n\nwhile the daemon runs\n",
    )
    .expect_code(0);
    stack.wait_delivered(&rcpt, 2);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    crate::support::stop_daemon(daemon);
    assert_eq!(stack.delivered(&rcpt).len(), 2, "each once");
    assert!(queued(&env, stack).is_empty());
}

/// A permanent refusal: exit 1 with the server's reply, the message in failed/ (listed as
/// failed); `retry` queues it again and `drop` removes it.
#[test]
fn permanent_refusal_fails_and_can_be_retried() {
    let stack = MailStack::get();
    let (env, _user, _rcpt) =
        TestEnv::for_sendmail(stack, "smfail", stack.ports.postfix_submission);
    let bad = format!("nobody@{REJECT_DOMAIN}");
    let run = sendmail(&env, stack, &[&bad], "Subject: refused\n\nx\n");
    run.expect_code(1);
    assert!(run.stderr.contains("550 5.1.1"), "{}", run.stderr);
    assert!(run.stderr.contains("queue retry"), "{}", run.stderr);
    let failed = queued(&env, stack);
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["status"], "failed");
    let status = env.run_full(
        &["status"],
        &[("MP_TEST_SECRET", &stack.oauth.client_secret())],
        None,
    );
    status.expect_code(1);
    assert!(
        status.stdout.contains("outbox queue: failed 1 failed"),
        "{}",
        status.stdout
    );
    let id = failed[0]["id"].as_str().expect("id").to_string();
    let shown = queue(&env, stack, &["show", &id]);
    shown.expect_code(0);
    assert!(shown.stdout.contains("Subject: refused"));
    queue(&env, stack, &["retry", &id]).expect_code(0);
    assert_eq!(queued(&env, stack)[0]["status"], "queued");
    queue(&env, stack, &["drop", &id]).expect_code(0);
    assert!(queued(&env, stack).is_empty());
    queue(&env, stack, &["drop", "../../etc"]).expect_code(1);
}

/// `kill -9` of sendmail at ten moments of its run: every message that got exit 0 is delivered
/// exactly once after a flush; a killed one at most twice with one Message-ID (killed between the
/// server's 250 and the removal); nothing half-written is left in the outbox.
#[test]
fn killed_sendmail_loses_nothing() {
    use std::io::Write as _;
    use std::process::Stdio;
    use std::time::Duration;
    let stack = MailStack::get();
    let (env, _user, rcpt) = TestEnv::for_sendmail(stack, "smkill", stack.ports.postfix_submission);
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d ^ u64::from(std::process::id());
    let mut accepted = Vec::new();
    let mut killed = Vec::new();
    for n in 0..10 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let mut child = env
            .cmd(&["sendmail", "root"])
            .env("MP_TEST_SECRET", stack.oauth.client_secret())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(format!("Subject: kill-{n}\n\nbody {n}\n").as_bytes())
            .expect("write");
        std::thread::sleep(Duration::from_micros(seed % 25_000));
        let _ = child.kill();
        let status = child.wait().expect("wait");
        if status.code() == Some(0) {
            accepted.push(format!("kill-{n}"));
        } else {
            killed.push(format!("kill-{n}"));
        }
    }
    assert!(
        !killed.is_empty(),
        "some runs were killed ({} accepted)",
        accepted.len()
    );
    for entry in fs::read_dir(env.state_dir().join("outbox"))
        .expect("outbox")
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".mail") {
            let bytes = fs::read(entry.path()).expect("read");
            let head = bytes.split(|b| *b == b'\n').next().expect("head");
            serde_json::from_slice::<serde_json::Value>(head).expect("a whole head line");
            assert!(bytes.ends_with(b"\n"), "a whole message: {name}");
        }
    }
    queue(&env, stack, &["flush"]).expect_code(0);
    std::thread::sleep(Duration::from_millis(1000));
    let got: Vec<(String, String)> = stack
        .delivered(&rcpt)
        .iter()
        .filter_map(|raw| {
            let m = MessageParser::default().parse(raw)?;
            Some((m.subject()?.to_string(), m.message_id()?.to_string()))
        })
        .collect();
    let copies = |s: &str| got.iter().filter(|(d, _)| d == s).collect::<Vec<_>>();
    for s in &accepted {
        assert_eq!(copies(s).len(), 1, "{s} exactly once: {got:?}");
    }
    for s in &killed {
        // Killed after the server's 250 but before the outbox entry was removed: sent again by
        // the flush, with the same Message-ID.
        let c = copies(s);
        assert!(c.len() <= 2, "{s} at most twice: {got:?}");
        assert!(
            c.windows(2).all(|w| w[0].1 == w[1].1),
            "the same Message-ID: {c:?}"
        );
    }
    assert!(queued(&env, stack).is_empty());
}

/// Two other Unix users' `sendmail` leave their messages in the service user's drop directory
/// (sticky, writable, not listable by them); the service user's daemon moves them into its outbox
/// and delivers both. The users never read the service user's tokens.
#[test]
fn other_users_drop_for_the_daemon() {
    use std::os::unix::fs::PermissionsExt;
    use std::process::{Command, Stdio};
    let stack = MailStack::get();
    let (env, _user, rcpt) = TestEnv::for_sendmail(stack, "smdrop", stack.ports.postfix_submission);
    let shared = tempfile::Builder::new()
        .prefix("mailpilot-drop-test")
        .tempdir_in("/tmp")
        .expect("shared dir");
    let mode = |path: &std::path::Path, m: u32| {
        fs::set_permissions(path, fs::Permissions::from_mode(m)).expect("chmod")
    };
    mode(shared.path(), 0o755);
    let drop_dir = shared.path().join("drop");
    fs::create_dir(&drop_dir).expect("drop dir");
    mode(&drop_dir, 0o1733);
    let config = shared.path().join("config.toml");
    let mut text = fs::read_to_string(env.config_path()).expect("config");
    text = text.replace(
        "[sendmail.aliases]",
        &format!(
            "[sendmail]\ndrop_dir = \"{}\"\n\n[sendmail.aliases]",
            drop_dir.display()
        ),
    );
    fs::write(&config, text).expect("write config");
    mode(&config, 0o644);
    let binary = shared.path().join("mailpilot");
    fs::copy(env!("CARGO_BIN_EXE_mailpilot"), &binary).expect("copy binary");
    mode(&binary, 0o755);
    for user in ["mpdrop1", "mpdrop2"] {
        // Exit 9: the user exists from an earlier run.
        let made = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                user,
            ])
            .status()
            .expect("useradd (passwd package)");
        assert!(
            made.success() || made.code() == Some(9),
            "useradd {user}: {made}"
        );
        let as_user = |program: &std::path::Path, args: &[&str]| {
            let mut cmd = Command::new("setpriv");
            cmd.args([
                &format!("--reuid={user}"),
                &format!("--regid={user}"),
                "--clear-groups",
                "--",
            ])
            .arg(program)
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", shared.path())
            .env("MAILPILOT_CONFIG", &config);
            cmd
        };
        let mut child = as_user(&binary, &["sendmail", "root"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("setpriv");
        use std::io::Write as _;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(format!("Subject: from {user}\n\ndropped\n").as_bytes())
            .expect("write");
        let out = child.wait_with_output().expect("sendmail");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{user}: {stderr}");
        assert!(stderr.contains("left for the mailpilot daemon"), "{stderr}");
        let listing = as_user(
            std::path::Path::new("/bin/ls"),
            &[drop_dir.to_str().expect("utf8")],
        )
        .output()
        .expect("ls");
        assert!(
            !listing.status.success(),
            "{user} cannot list the drop directory"
        );
    }
    let daemon = env.spawn_with_secret(
        &stack.oauth,
        &["--config", config.to_str().expect("utf8"), "daemon"],
    );
    let delivered = stack.wait_delivered(&rcpt, 2);
    crate::support::stop_daemon(daemon);
    let subjects: Vec<String> = delivered
        .iter()
        .filter_map(|raw| {
            MessageParser::default()
                .parse(raw)?
                .subject()
                .map(str::to_string)
        })
        .collect();
    for user in ["mpdrop1", "mpdrop2"] {
        assert!(subjects.contains(&format!("from {user}")), "{subjects:?}");
    }
    let left = fs::read_dir(&drop_dir).expect("drop dir").count();
    assert_eq!(left, 0, "every dropped message moved to the outbox");
}

/// A message for a local name without an alias cannot be sent, but is not lost: exit 2 with the
/// line to add, and the message kept in failed/ for `queue show`.
#[test]
fn unroutable_message_is_kept() {
    let stack = MailStack::get();
    let (env, _user, _rcpt) =
        TestEnv::for_sendmail(stack, "smnoalias", stack.ports.postfix_submission);
    let run = sendmail(
        &env,
        stack,
        &["www-data"],
        "Subject: to nobody known\n\nkeep me\n",
    );
    run.expect_code(2);
    assert!(run.stderr.contains("[sendmail.aliases]"), "{}", run.stderr);
    assert!(
        run.stderr.contains("the message is kept as"),
        "{}",
        run.stderr
    );
    let kept = queued(&env, stack);
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0]["status"], "failed");
    let id = kept[0]["id"].as_str().expect("id");
    let shown = queue(&env, stack, &["show", id]);
    assert!(shown.stdout.contains("keep me"), "{}", shown.stdout);
}
