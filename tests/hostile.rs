//! Untrusted input never stops, floods or fools mailpilot: hostile token endpoints, mail servers,
//! messages, merge data, flags and files (issue 11). Each test fails without its fix.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::fake_imap::{FakeImap, Misbehaviour};
use crate::support::{Fault, MailStack, OAuthServer, TestEnv};

/// Peak memory allowed for a run fed a 100 MB answer: the binary itself needs ~10 MB.
const FLOOD_RSS_LIMIT_KIB: u64 = 40 * 1024;

/// A token server and an environment whose account `work` holds a grant from it.
fn granted() -> (OAuthServer, TestEnv) {
    let server = OAuthServer::start();
    let env = TestEnv::new();
    env.config_for(&server, "");
    env.import(&server);
    (server, env)
}

/// A "never expires" lifetime (`expires_in: 999999999999`) is capped on the way in: `auth status`
/// works instead of panicking, and the token is used.
#[test]
fn absurd_expires_in_is_capped() {
    let (server, env) = granted();
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
    let (server, env) = granted();
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
    let (server, env) = granted();
    let before = fs::read(env.token_file("work")).expect("token file");
    server.set_fault(Fault::Huge(100 * 1024 * 1024));
    let (run, rss) = env.run_measured(
        &["auth", "token", "work", "--force"],
        &[("MP_TEST_SECRET", &server.client_secret())],
    );
    eprintln!("token endpoint 100 MB answer: peak RSS {rss} KiB");
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

/// Account `work` at `server` whose client secret comes from `cmd`, plus `extra` lines.
fn secret_cmd_config(server: &OAuthServer, cmd: &str, extra: &str) -> String {
    format!(
        "[accounts.work]\nprovider = \"custom\"\nemail = \"ops@example.com\"\nclient_id = \"test-client\"\nclient_secret_cmd = {cmd:?}\ntoken_url = \"{}\"\n{extra}\n",
        server.token_url()
    )
}

/// A `client_secret_cmd` that hangs is stopped after `token_timeout` (exit 75: retry later), and
/// it no longer holds every other run behind the refresh lock.
#[test]
fn hanging_secret_command_times_out() {
    let (server, env) = granted();
    let cmd = format!("sleep 20; echo {}", server.client_secret());
    env.write_config(&secret_cmd_config(&server, &cmd, "token_timeout = \"2s\""));
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
    let (server, env) = granted();
    env.write_config(&secret_cmd_config(&server, "yes", ""));
    let (run, rss) = env.run_measured(&["auth", "token", "work", "--force"], &[]);
    eprintln!("client_secret_cmd = yes: peak RSS {rss} KiB");
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
    let (server, env) = granted();
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
    let (server, env) = granted();
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

/// A crafted message, 300 bytes of attachment name twice.
fn crafted_message(to: &str) -> Vec<u8> {
    let name = format!("{}.txt", "n".repeat(300));
    format!(
        "From: x@example.com\r\nTo: {to}\r\nSubject: =?utf-8?B?YQBi?=\r\nMessage-ID: <crafted@example.com>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nhello\r\n--b\r\nContent-Type: text/plain\r\nContent-Disposition: attachment; filename=\"{name}\"\r\n\r\none\r\n--b\r\nContent-Type: text/plain\r\nContent-Disposition: attachment; filename=\"{name}\"\r\n\r\ntwo\r\n--b--\r\n"
    )
    .into_bytes()
}

/// A subject that decodes to a NUL byte no longer stops `--exec` for good, the client secret's
/// variable is not passed to the command, and two 300-byte attachment names become two short,
/// distinct files.
#[test]
fn crafted_mail_does_not_block_the_pipeline() {
    let stack = MailStack::get();
    let (env, user) = TestEnv::for_mailbox(stack, "crafted");
    env.import_for(&stack.oauth, &user);
    stack.deliver_raw(&user, "INBOX", &crafted_message(&user));
    stack.deliver(&user, "INBOX", "after");
    let secret = stack.oauth.client_secret();
    let log = env.root().join("log");
    let exec = format!(
        "printf '%s|%s\\n' \"$MAILPILOT_SUBJECT\" \"${{MP_TEST_SECRET:-hidden}}\" >> {}",
        log.display()
    );
    env.run_full(
        &["poll", "--all", "--exec", &exec],
        &[("MP_TEST_SECRET", &secret)],
        None,
    )
    .expect_code(0);
    assert_eq!(
        fs::read_to_string(&log).expect("log"),
        "ab|hidden\nafter|hidden\n"
    );
    // The same mail with attachments saved (a fresh checkpoint: another mailbox copy).
    let dir = env.root().join("att");
    stack.deliver_raw(&user, "INBOX", &crafted_message(&user));
    let run = env.run_full(
        &["poll", "--save-attachments", dir.to_str().expect("utf8")],
        &[("MP_TEST_SECRET", &secret)],
        None,
    );
    run.expect_code(0);
    let json: serde_json::Value = serde_json::from_str(run.stdout.trim()).expect("json");
    let saved: Vec<String> = json["attachments"]
        .as_array()
        .expect("attachments")
        .iter()
        .map(|a| a["saved_as"].as_str().expect("saved_as").to_string())
        .collect();
    assert_eq!(saved.len(), 2);
    assert_ne!(saved[0], saved[1], "two attachments, two files");
    for (path, body) in saved.iter().zip(["one", "two"]) {
        assert_eq!(fs::read_to_string(path).expect("saved").trim(), body);
        let name = std::path::Path::new(path).file_name().expect("name");
        assert!(name.len() < 150, "{name:?}");
    }
}

/// A message over `max_message_size` is quarantined: the run handles the mail after it, exits 1
/// naming it once, the next run goes on quietly, and `--retry-quarantined` brings it back.
#[test]
fn oversized_message_is_quarantined() {
    let stack = MailStack::get();
    let (env, user) = TestEnv::for_mailbox(stack, "quarantine");
    env.import_for(&stack.oauth, &user);
    let config = fs::read_to_string(env.config_path()).expect("config");
    let limited = config.replace(
        "client_secret_env = \"MP_TEST_SECRET\"",
        "client_secret_env = \"MP_TEST_SECRET\"\nmax_message_size = 4096",
    );
    env.write_config(&limited);
    let big = format!(
        "From: x@example.com\r\nTo: {user}\r\nSubject: big\r\n\r\n{}\r\n",
        "x".repeat(10_000)
    );
    stack.deliver(&user, "INBOX", "before");
    stack.deliver_raw(&user, "INBOX", big.as_bytes());
    stack.deliver(&user, "INBOX", "after");
    let secret = stack.oauth.client_secret();
    let poll = |args: &[&str]| {
        let mut all = vec!["poll"];
        all.extend_from_slice(args);
        env.run_full(&all, &[("MP_TEST_SECRET", &secret)], None)
    };
    let subjects = |run: &crate::support::Run| -> Vec<String> {
        run.stdout
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).expect("json");
                v["subject"].as_str().unwrap_or_default().to_string()
            })
            .collect()
    };
    let run = poll(&["--all"]);
    run.expect_code(1);
    assert_eq!(subjects(&run), ["before", "after"]);
    assert!(
        run.stderr
            .contains("1 message of INBOX cannot be handled and was quarantined: UID 2 (it is"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("over max_message_size (4096 bytes)"),
        "{}",
        run.stderr
    );
    let run = poll(&[]);
    run.expect_code(0);
    assert!(run.stdout.is_empty());
    env.write_config(&config);
    let run = poll(&["--retry-quarantined"]);
    run.expect_code(0);
    assert_eq!(subjects(&run), ["big"]);
    let run = poll(&["--retry-quarantined"]);
    run.expect_code(0);
    assert!(run.stdout.is_empty(), "handled once: {}", run.stdout);
}

/// One poll against a misbehaving server with two small messages; returns the run and its peak
/// RSS in KiB.
fn poll_fake(misbehaviour: Misbehaviour) -> (crate::support::Run, u64, TestEnv) {
    let server = OAuthServer::start();
    let imap = FakeImap::start(misbehaviour);
    for subject in ["one", "two"] {
        imap.add(format!("From: x@example.com\r\nSubject: {subject}\r\n\r\nbody\r\n").as_bytes());
    }
    let env = TestEnv::new();
    env.write_config(&imap.config(&server.token_url()));
    env.import(&server);
    let (run, rss) = env.run_measured(
        &["poll", "--all"],
        &[("MP_TEST_SECRET", &server.client_secret())],
    );
    (run, rss, env)
}

/// An endless stream of untagged FETCH responses to one `UID FETCH` is cut off at a bounded
/// number of bytes: exit 1 naming the cause, flat memory, the checkpoint before the message.
#[test]
fn fetch_flood_is_cut_off() {
    let started = Instant::now();
    let (run, rss, env) = poll_fake(Misbehaviour::FloodFetch(500 * 1024 * 1024));
    eprintln!("500 MB of untagged FETCH: peak RSS {rss} KiB");
    run.expect_code(1);
    assert!(
        run.stderr
            .contains("bytes in answer to one command; stopped reading"),
        "{}",
        run.stderr
    );
    assert!(rss < FLOOD_RSS_LIMIT_KIB, "peak RSS {rss} KiB");
    assert!(started.elapsed() < Duration::from_secs(15));
    let checkpoint = fs::read_to_string(env.state_dir().join("poll/work/INBOX.json")).expect("cp");
    assert!(checkpoint.contains("\"last_uid\":0"), "{checkpoint}");
}

/// A literal far larger than the size the server announced is not held whole.
#[test]
fn huge_literal_is_cut_off() {
    let (run, rss, _env) = poll_fake(Misbehaviour::HugeLiteral(500 * 1024 * 1024));
    eprintln!("500 MB literal: peak RSS {rss} KiB");
    run.expect_code(1);
    assert!(run.stderr.contains("stopped reading"), "{}", run.stderr);
    assert!(rss < FLOOD_RSS_LIMIT_KIB, "peak RSS {rss} KiB");
}

/// A FETCH answer without the requested UID is not a silent skip: the server still lists the
/// message, so the poll stops before it (exit 1) and the checkpoint does not move past it.
#[test]
fn fetch_without_the_uid_stops_before_it() {
    let (run, _rss, env) = poll_fake(Misbehaviour::WrongUidFor(1));
    run.expect_code(1);
    assert!(
        run.stderr
            .contains("lists UID 1 of INBOX but did not return it"),
        "{}",
        run.stderr
    );
    assert_eq!(run.stdout, "", "message 2 is not handed over ahead of 1");
    let checkpoint = fs::read_to_string(env.state_dir().join("poll/work/INBOX.json")).expect("cp");
    assert!(checkpoint.contains("\"last_uid\":0"), "{checkpoint}");
}

/// A message expunged between the size query and the one streamed body FETCH is not an error:
/// it is reported as deleted, the messages around it are handed over in order, and the
/// checkpoint moves past all of them.
#[test]
fn message_expunged_mid_poll_is_passed_over() {
    let server = OAuthServer::start();
    let imap = FakeImap::start(Misbehaviour::ExpungedAfterSize(2));
    for subject in ["one", "two", "three"] {
        imap.add(format!("From: x@example.com\r\nSubject: {subject}\r\n\r\nbody\r\n").as_bytes());
    }
    let env = TestEnv::new();
    env.write_config(&imap.config(&server.token_url()));
    env.import(&server);
    let run = env.run_with_secret(&server, &["poll", "--all"]);
    run.expect_code(0);
    let subjects: Vec<String> = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON")["subject"].to_string())
        .collect();
    assert_eq!(subjects, ["\"one\"", "\"three\""]);
    assert!(
        run.stderr
            .contains("UID 2 of INBOX was deleted before it could be fetched"),
        "{}",
        run.stderr
    );
    let checkpoint = fs::read_to_string(env.state_dir().join("poll/work/INBOX.json")).expect("cp");
    assert!(checkpoint.contains("\"last_uid\":3"), "{checkpoint}");
}

/// A token endpoint that keeps answering with something that is not a token response (a 200 HTML
/// page) is retried at first (75), and after an hour of it the refresh fails for good (exit 1,
/// saying why), so cron stops retrying in silence. The grant is never touched.
#[test]
fn lasting_garbage_escalates_to_a_failure() {
    let (server, env) = granted();
    let before = fs::read(env.token_file("work")).expect("token file");
    server.set_fault(Fault::Garbage);
    env.run_with_secret(&server, &["auth", "token", "work", "--force"])
        .expect_code(75);
    let record_path = env.state_dir().join("tokens/work.error.json");
    let mut record: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&record_path).expect("error record"))
            .expect("json");
    assert_eq!(record["unexpected"], true, "{record}");
    // An hour and more of the same.
    let since = record["since"].as_u64().expect("since") - 7200;
    record["since"] = since.into();
    fs::write(&record_path, record.to_string()).expect("write record");
    let run = env.run_with_secret(&server, &["auth", "token", "work", "--force"]);
    run.expect_code(1);
    assert!(
        run.stderr.contains(
            "for 2h the token endpoint has answered with something that is not a token response"
        ),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("hint: check token_url"),
        "{}",
        run.stderr
    );
    assert_eq!(
        fs::read(env.token_file("work")).expect("token file"),
        before
    );
    // The provider recovers: the next refresh works and the streak is over.
    server.set_fault(Fault::None);
    env.run_with_secret(&server, &["auth", "token", "work", "--force"])
        .expect_code(0);
    assert!(!record_path.exists());
}

/// A server answer that is not IMAP is reported as the text it was (without its terminal
/// escapes), not as a list of byte values.
#[test]
fn unparseable_imap_answer_reads_as_text() {
    let (run, _rss, _env) = poll_fake(Misbehaviour::GarbageSelect);
    assert_ne!(run.code, 0);
    assert!(
        run.stderr
            .contains("the server sent something that is not IMAP: \"* [31mNOT IMAP AT ALL"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("input: ["), "{}", run.stderr);
    assert!(!run.stderr.contains('\u{1b}'), "{}", run.stderr);
}

/// A server listing a UID at or above its own UIDNEXT (which would move the checkpoint past all
/// future mail) is refused before anything is handed over.
#[test]
fn uid_above_uidnext_is_refused() {
    let (run, _rss, env) = poll_fake(Misbehaviour::UidAboveUidnext);
    run.expect_code(1);
    assert!(
        run.stderr
            .contains("listed UID 4000000000 in INBOX, but its UIDNEXT is 3"),
        "{}",
        run.stderr
    );
    assert_eq!(run.stdout, "");
    let checkpoint = fs::read_to_string(env.state_dir().join("poll/work/INBOX.json")).expect("cp");
    assert!(checkpoint.contains("\"last_uid\":0"), "{checkpoint}");
}
