//! Untrusted input never stops, floods or fools mailpilot: hostile token endpoints, mail servers,
//! messages, merge data, flags and files (issue 11). Each test fails without its fix.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::fake_imap::{FakeImap, Misbehaviour};
use crate::support::{Fault, OAuthServer, TestEnv};

/// Peak memory allowed for a run fed a 100 MB answer: the binary itself needs ~10 MB.
const FLOOD_RSS_LIMIT_KIB: u64 = 40 * 1024;

/// A "never expires" lifetime (`expires_in: 999999999999`) is capped on the way in: `auth status`
/// works instead of panicking, and the token is used.
#[test]
fn absurd_expires_in_is_capped() {
    let server = OAuthServer::start();
    let env = TestEnv::new();
    env.config_for(&server, "");
    env.import(&server);
    server.set_fault(Fault::Json(
        200,
        r#"{"access_token":"at-forever","token_type":"Bearer","expires_in":999999999999}"#.into(),
    ));
    env.run_with_secret(&server, &["auth", "refresh", "work", "--force"])
        .expect_code(0);
    let expires_at = env.token_json("work")["expires_at"]
        .as_u64()
        .expect("expires_at");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    assert!(
        expires_at <= now + 366 * 86_400,
        "lifetime capped at a year: {expires_at}"
    );
    let status = env.run(&["auth", "status", "work"]);
    status.expect_code(0);
    assert!(status.stdout.contains("valid for"), "{}", status.stdout);
    let token = env.run_with_secret(&server, &["auth", "token", "work"]);
    token.expect_code(0);
    assert_eq!(token.stdout, "at-forever\n");
}

/// `expires_in` sent as a string (`"3600"`) is read as the number it is.
#[test]
fn expires_in_as_string_is_accepted() {
    let server = OAuthServer::start();
    let env = TestEnv::new();
    env.config_for(&server, "");
    env.import(&server);
    server.set_fault(Fault::Json(
        200,
        r#"{"access_token":"at-string","token_type":"Bearer","expires_in":"3600"}"#.into(),
    ));
    let run = env.run_with_secret(&server, &["auth", "token", "work", "--force"]);
    run.expect_code(0);
    assert_eq!(run.stdout, "at-string\n");
    let token = env.token_json("work");
    let lifetime = token["expires_at"].as_u64().expect("expires_at")
        - token["refreshed_at"].as_u64().expect("refreshed_at");
    assert_eq!(lifetime, 3600);
}

/// A 100 MB answer from the token endpoint is not read whole: the refresh fails as transient
/// (exit 75, the grant untouched) and the process stays small.
#[test]
fn huge_token_answer_is_cut_off() {
    let server = OAuthServer::start();
    let env = TestEnv::new();
    env.config_for(&server, "");
    env.import(&server);
    let before = fs::read(env.token_file("work")).expect("token file");
    server.set_fault(Fault::Huge(100 * 1024 * 1024));
    let (run, rss) = env.run_measured(
        &["auth", "token", "work", "--force"],
        &[("MP_TEST_SECRET", &server.client_secret())],
    );
    run.expect_code(75);
    assert!(
        run.stderr.contains("larger than 1024 KiB"),
        "{}",
        run.stderr
    );
    assert!(
        rss < FLOOD_RSS_LIMIT_KIB,
        "peak RSS {rss} KiB for a 100 MB answer"
    );
    assert_eq!(
        fs::read(env.token_file("work")).expect("token file"),
        before
    );
}

/// A `client_secret_cmd` that hangs is stopped after `token_timeout` (exit 75: retry later), and
/// it no longer holds every other run behind the refresh lock.
#[test]
fn hanging_secret_command_times_out() {
    let server = OAuthServer::start();
    let env = TestEnv::new();
    env.config_for(&server, "");
    env.import(&server);
    env.write_config(&format!(
        r#"
[accounts.work]
provider = "custom"
email = "ops@example.com"
client_id = "test-client"
client_secret_cmd = "sleep 20; echo {}"
token_url = "{}"
token_timeout = "2s"
"#,
        server.client_secret(),
        server.token_url()
    ));
    let started = Instant::now();
    let run = env.run(&["auth", "token", "work", "--force"]);
    run.expect_code(75);
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        run.stderr.contains("did not finish within 2s"),
        "{}",
        run.stderr
    );
}

/// A `client_secret_cmd` that never stops printing (`yes`) is stopped at 64 KiB: exit 1, small.
#[test]
fn flooding_secret_command_is_stopped() {
    let server = OAuthServer::start();
    let env = TestEnv::new();
    env.config_for(&server, "");
    env.import(&server);
    env.write_config(&format!(
        r#"
[accounts.work]
provider = "custom"
email = "ops@example.com"
client_id = "test-client"
client_secret_cmd = "yes"
token_url = "{}"
"#,
        server.token_url()
    ));
    let (run, rss) = env.run_measured(&["auth", "token", "work", "--force"], &[]);
    run.expect_code(1);
    assert!(
        run.stderr.contains("printed more than 64 KiB"),
        "{}",
        run.stderr
    );
    assert!(rss < FLOOD_RSS_LIMIT_KIB, "peak RSS {rss} KiB");
}

/// A config path that is a FIFO (which would block) or a device that never ends (`/dev/zero`) is
/// refused at once with exit 2.
#[test]
fn non_regular_config_is_refused() {
    let env = TestEnv::new();
    let fifo = env.root().join("config.fifo");
    let made = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(made.success());
    for path in [fifo.to_str().expect("utf8"), "/dev/zero"] {
        let started = Instant::now();
        let run = env.run(&["--config", path, "config", "check"]);
        run.expect_code(2);
        assert!(
            run.stderr.starts_with(&format!(
                "error: configuration file {path} cannot be used: it is not a regular file"
            )),
            "{}",
            run.stderr
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}

/// A token file readable by others is set to 0600 with a warning; one owned by another user is
/// refused (its grant is not ours to use).
#[test]
fn token_file_ownership_and_mode() {
    let server = OAuthServer::start();
    let env = TestEnv::new();
    env.config_for(&server, "");
    env.import(&server);
    let file = env.token_file("work");
    fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).expect("chmod");
    let run = env.run_with_secret(&server, &["auth", "token", "work"]);
    run.expect_code(0);
    assert!(run.stderr.contains("readable by others"), "{}", run.stderr);
    let mode = fs::metadata(&file).expect("meta").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    std::os::unix::fs::chown(&file, Some(65534), None)
        .expect("chown to nobody (the test suite runs as root, as CI does)");
    let run = env.run_with_secret(&server, &["auth", "token", "work"]);
    run.expect_code(1);
    assert!(
        run.stderr.contains("belongs to user id 65534"),
        "{}",
        run.stderr
    );
    assert_eq!(run.stdout, "");
}

/// An "access token" with control characters (a terminal escape) is never printed.
#[test]
fn token_with_control_characters_is_not_printed() {
    let server = OAuthServer::start();
    let env = TestEnv::new();
    env.config_for(&server, "");
    env.import(&server);
    server.set_fault(Fault::Json(
        200,
        r#"{"access_token":"at\u001b]0;owned\u0007","token_type":"Bearer","expires_in":3600}"#
            .into(),
    ));
    let run = env.run_with_secret(&server, &["auth", "token", "work", "--force"]);
    run.expect_code(1);
    assert_eq!(run.stdout, "");
    assert!(
        run.stderr.contains("contains control characters"),
        "{}",
        run.stderr
    );
}

/// An error description with terminal escapes and a megabyte of text is printed clean and short,
/// and a job's `on_failure` hook still starts with it in `MAILPILOT_ERROR`.
#[test]
fn hostile_error_text_is_cleaned_and_cut() {
    let server = OAuthServer::start();
    let env = TestEnv::new();
    let hook_out = env.root().join("hook");
    env.config_for(
        &server,
        &format!(
            "\n[accounts.work.smtp]\nhost = \"127.0.0.1\"\nport = 9\ntls = \"none\"\n\n[jobs.j]\nkind = \"send\"\naccount = \"work\"\nto = [\"a@example.com\"]\nsubject = \"s\"\ntext = \"t\"\non_failure = \"printf %s \\\"$MAILPILOT_ERROR\\\" > {}\"\n",
            hook_out.display()
        ),
    );
    env.import(&server);
    let description = format!("\u{1b}[2J\u{1b}]0;pwned\u{7}{}", "A".repeat(1_000_000));
    let body = serde_json::json!({"error": "invalid_grant", "error_description": description});
    server.set_fault(Fault::Json(400, body.to_string()));
    let run = env.run_with_secret(&server, &["auth", "token", "work", "--force"]);
    run.expect_code(77);
    assert!(!run.stderr.contains('\u{1b}'), "escape printed raw");
    assert!(
        run.stderr.len() < 4096,
        "{} bytes of stderr",
        run.stderr.len()
    );
    assert!(run.stderr.contains("[2J]0;pwnedAAAA"), "{}", run.stderr);
    // Expire the stored token so the job has to refresh (and meets the same answer).
    let mut token = env.token_json("work");
    token["expires_at"] = 1.into();
    fs::write(env.token_file("work"), token.to_string()).expect("write token");
    let job = env.run_with_secret(&server, &["run", "j"]);
    job.expect_code(77);
    let hook = fs::read_to_string(&hook_out).expect("on_failure ran");
    assert!(hook.contains("needs authorization"), "{hook}");
    assert!(hook.len() <= 8192, "{} bytes", hook.len());
}

/// `--flag` and `--search` are written into IMAP commands: a CR/LF (a second command such as
/// `DELETE INBOX`) or a non-atom flag is refused before anything connects (exit 2).
#[test]
fn flags_and_search_cannot_become_commands() {
    let env = TestEnv::new();
    env.write_config(
        r#"
[accounts.work]
provider = "custom"
email = "ops@example.com"
client_id = "id"
token_url = "http://127.0.0.1:9/token"
[accounts.work.imap]
host = "127.0.0.1"
port = 9
tls = "none"
"#,
    );
    for args in [
        ["--flag", "seen)\r\nA1 DELETE INBOX"],
        ["--flag", "two words"],
        ["--search", "ALL\r\nA1 DELETE INBOX"],
    ] {
        let mut all = vec!["poll", "--all"];
        all.extend_from_slice(&args);
        let run = env.run(&all);
        run.expect_code(2);
        assert!(
            run.stderr.starts_with("error: invalid value '")
                && run.stderr.contains(&format!("' for '{} <", args[0])),
            "{}",
            run.stderr
        );
        assert!(
            run.stderr.contains("is not an IMAP flag")
                || run.stderr.contains("may not contain control characters"),
            "{}",
            run.stderr
        );
    }
}

/// A merge row may attach only files under the data file's directory (`/etc/passwd` and `../`
/// are refused with the row number), unless `--attachments-from` names another directory; a
/// value with a line break that would land in the subject is refused with the row number.
#[test]
fn merge_rows_cannot_reach_outside_or_fold_headers() {
    let env = TestEnv::new();
    let data_dir = env.root().join("data");
    fs::create_dir_all(&data_dir).expect("mkdir");
    fs::write(env.root().join("secret.txt"), "do not send").expect("secret");
    fs::write(data_dir.join("ok.txt"), "fine").expect("ok");
    let templates = env.root().join("templates");
    fs::create_dir_all(&templates).expect("mkdir");
    fs::write(
        templates.join("t.j2"),
        "{% block subject %}Report for {{ name }}{% endblock %}\n{% block text %}Hello {{ name }}{% endblock %}\n",
    )
    .expect("template");
    let rows = data_dir.join("rows.json");
    fs::write(
        &rows,
        serde_json::json!([
            {"to": "a@example.com", "name": "A", "attachments": ["ok.txt"]},
            {"to": "b@example.com", "name": "B", "attachments": ["/etc/passwd"]},
            {"to": "c@example.com", "name": "C", "attachments": ["../secret.txt"]},
            {"to": "d@example.com", "name": "D\r\nBcc: victim@example.com"},
        ])
        .to_string(),
    )
    .expect("rows");
    let templates_arg = templates.to_str().expect("utf8");
    let rows_arg = rows.to_str().expect("utf8");
    let base = [
        "send",
        "--dry-run",
        "--from",
        "r@example.com",
        "--template",
        "t",
        "--templates-dir",
        templates_arg,
        "--each",
        rows_arg,
    ];
    let run = env.run(&base);
    run.expect_code(2);
    let r = rows.display();
    for want in [
        format!("{r} row 2: attachment \"/etc/passwd\" is outside"),
        format!("{r} row 3: attachment \"../secret.txt\" is outside"),
        format!("{r} row 4: template"),
        "a value with a line break would land in the subject".to_string(),
    ] {
        assert!(
            run.stderr.contains(&want),
            "want {want:?} in:\n{}",
            run.stderr
        );
    }
    assert!(!run.stdout.contains("do not send"));
    // Another directory allowed explicitly: its files (relative to it) can be attached.
    fs::write(
        &rows,
        serde_json::json!([{"to": "c@example.com", "name": "C", "attachments": ["secret.txt"]}])
            .to_string(),
    )
    .expect("rows");
    let root = env.root().to_str().expect("utf8");
    let mut allowed = base.to_vec();
    allowed.extend_from_slice(&["--attachments-from", root]);
    let run = env.run(&allowed);
    run.expect_code(0);
    assert!(run.stdout.contains("secret.txt"), "{}", run.stdout);
}

/// `watch` against a server that accepts the login and then drops the session (when it goes
/// idle) backs off (1 s, 4 s, 16 s, … with jitter) instead of starting over at 1 s after every
/// login.
#[test]
fn watch_backs_off_from_a_server_that_drops_after_login() {
    let server = OAuthServer::start();
    let imap = FakeImap::start(Misbehaviour::DropAtIdle);
    let env = TestEnv::new();
    env.write_config(&imap.config(&server.token_url()));
    env.import(&server);
    let child = env
        .cmd(&["watch", "--from-now"])
        .env("MP_TEST_SECRET", server.client_secret())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn watch");
    std::thread::sleep(Duration::from_secs(10));
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // 0 s, ~1 s, ~5 s, then ~21 s: three logins in ten seconds (not ten, one a second).
    let logins = imap.logins();
    assert!(
        (2..=4).contains(&logins),
        "{logins} logins in 10 s:\n{stderr}"
    );
    assert!(stderr.contains("reconnecting in"), "{stderr}");
}
