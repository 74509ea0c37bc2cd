//! Tokens sealed at rest: with `[state] key_file` (or the systemd credential `mailpilot.key`) the
//! token files hold no token in clear; a wrong or missing key is exit 77 with the file untouched;
//! `state rotate-key` moves every grant to another key, or back to plain files.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::support::{OAuthServer, TestEnv};

/// The account `work` on `server`, sealing with `key` (none: plain).
fn config(env: &TestEnv, server: &OAuthServer, key: Option<&Path>) {
    let state = key.map_or(String::new(), |k| {
        format!("\n[state]\nkey_file = \"{}\"\n", k.display())
    });
    env.config_for(server, &state);
}

fn token_text(env: &TestEnv) -> String {
    std::fs::read_to_string(env.token_file("work")).expect("token file")
}

/// With a key, the token file is version 2 with sealed values: no token issued by the server
/// appears in it, and `auth token`, a forced refresh and `config check` work.
#[test]
fn tokens_sealed_at_rest() {
    let server = OAuthServer::start();
    server.set_rotation(true);
    let env = TestEnv::new();
    let key = env.key_file("state.key", 0x11);
    config(&env, &server, Some(&key));
    env.import(&server);
    env.run_with_secret(&server, &["auth", "refresh", "work", "--force"])
        .expect_code(0);
    let text = token_text(&env);
    assert!(
        text.contains("\"version\": 2") && text.contains("seal1:"),
        "{text}"
    );
    for secret in server.all_secrets() {
        assert!(!text.contains(&secret), "{secret} in clear:\n{text}");
    }
    let run = env.run(&["auth", "token", "work"]);
    run.expect_code(0);
    assert_eq!(
        run.stdout.trim(),
        server.last_access_token().expect("issued")
    );
    let check = env.run(&["config", "check"]);
    check.expect_code(0);
    let id = text
        .split("\"key_id\": \"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("key_id")
        .to_string();
    assert!(
        check
            .stdout
            .contains(&format!("(tokens sealed with key {id})")),
        "{}",
        check.stdout
    );
}

/// A wrong key, a missing key file, no key at all, or a key others may read: exit 77 with the
/// reason and what to set; the token file stays byte-identical.
#[test]
fn wrong_or_missing_key() {
    let server = OAuthServer::start();
    let env = TestEnv::new();
    let key = env.key_file("state.key", 0x11);
    config(&env, &server, Some(&key));
    env.import(&server);
    let before = token_text(&env);
    let other = env.key_file("other.key", 0x22);
    let loose = env.key_file("loose.key", 0x11);
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let cases: [(Option<PathBuf>, &str); 4] = [
        (Some(other), "but the configured state key is"),
        (Some(env.root().join("gone.key")), "cannot be read"),
        (None, "and no state key is configured"),
        (Some(loose), "may be read by others (mode 644)"),
    ];
    for (key, message) in cases {
        config(&env, &server, key.as_deref());
        let run = env.run_with_secret(&server, &["auth", "refresh", "work", "--force"]);
        run.expect_code(77);
        assert!(run.stderr.contains(message), "{message}: {}", run.stderr);
        assert!(run.stderr.contains("hint: "), "{}", run.stderr);
        assert_eq!(token_text(&env), before, "the token file was touched");
    }
    // Whatever the key, the grant can be forgotten (then signed in again).
    env.run(&["auth", "logout", "work"]).expect_code(0);
    assert!(!env.token_file("work").exists());
}

/// `state rotate-key`: plain → key A → key B → plain, each grant opened before any is
/// rewritten; the systemd credential `mailpilot.key` serves as the key when the file names none.
#[test]
fn rotate_key_and_credential() {
    let server = OAuthServer::start();
    let env = TestEnv::new();
    config(&env, &server, None);
    env.import(&server);
    assert!(token_text(&env).contains("\"version\": 1"));
    let a = env.key_file("a.key", 0x11);
    let b = env.key_file("b.key", 0x22);
    // A key configured over a plain grant: config check says how to seal it now.
    config(&env, &server, Some(&a));
    let check = env.run(&["config", "check"]);
    check.expect_code(0);
    assert!(
        check.stderr.contains(&format!(
            "warning: the grants of work are still stored unsealed (they are sealed at their next refresh); to seal them now: mailpilot state rotate-key {}",
            a.display()
        )),
        "{}",
        check.stderr
    );
    config(&env, &server, None);
    let rotate = |args: &[&str]| {
        let mut all = vec!["state", "rotate-key"];
        all.extend_from_slice(args);
        env.run(&all)
    };
    let run = rotate(&[a.to_str().expect("utf8")]);
    run.expect_code(0);
    assert!(
        run.stderr.contains("sealed 1 grant(s) with key"),
        "{}",
        run.stderr
    );
    assert!(token_text(&env).contains("seal1:"));
    config(&env, &server, Some(&a));
    env.run(&["auth", "token", "work"]).expect_code(0);
    let check = env.run(&["config", "check"]);
    assert!(!check.stderr.contains("unsealed"), "{}", check.stderr);
    rotate(&[b.to_str().expect("utf8")]).expect_code(0);
    env.run(&["auth", "token", "work"]).expect_code(77);
    config(&env, &server, Some(&b));
    env.run(&["auth", "token", "work"]).expect_code(0);

    // The same key as a systemd credential, with no key_file.
    config(&env, &server, None);
    let creds = env.root().join("creds");
    std::fs::create_dir_all(&creds).expect("dir");
    std::fs::copy(&b, creds.join("mailpilot.key")).expect("copy");
    std::fs::set_permissions(
        creds.join("mailpilot.key"),
        std::fs::Permissions::from_mode(0o400),
    )
    .expect("chmod");
    let dir = creds.to_str().expect("utf8");
    env.run_full(
        &["auth", "token", "work"],
        &[("CREDENTIALS_DIRECTORY", dir)],
        None,
    )
    .expect_code(0);
    let run = env.run_full(
        &["state", "rotate-key", "--plain"],
        &[("CREDENTIALS_DIRECTORY", dir)],
        None,
    );
    run.expect_code(0);
    assert!(token_text(&env).contains("\"version\": 1"));
    env.run(&["auth", "token", "work"]).expect_code(0);
}

/// Sends one message to the relay on `port` from loopback without AUTH (Python's smtplib).
fn relay_message(port: u16, from: &str, to: &str, subject: &str) {
    let script = "import smtplib, sys\ns = smtplib.SMTP('127.0.0.1', int(sys.argv[1]), timeout=20)\ns.sendmail(sys.argv[2], [sys.argv[3]], 'Subject: %s\\r\\n\\r\\nx\\r\\n' % sys.argv[4])\ns.quit()\n";
    let status = std::process::Command::new("python3")
        .args(["-c", script, &port.to_string(), from, to, subject])
        .status()
        .expect("python3");
    assert!(status.success(), "smtplib failed");
}

/// A running daemon that read the grant with key A, whose key then changes (rotate-key, key_file
/// edited, SIGHUP), delivers with the new key: a message relayed afterwards (so the daemon's own
/// outbox drain sends it, on a new session) opens the re-sealed grant.
#[test]
fn daemon_takes_a_new_key_on_reload() {
    use crate::support::mailstack::{free_port, wait_for_port};
    use crate::support::MailStack;
    let stack = MailStack::get();
    let (env, user, rcpt) =
        TestEnv::for_sendmail(stack, "sealreload", stack.ports.postfix_submission);
    let a = env.key_file("a.key", 0x31);
    let b = env.key_file("b.key", 0x32);
    let port = free_port();
    let base = std::fs::read_to_string(env.config_path()).expect("config");
    let with_key = |key: &Path| {
        env.write_config(&format!(
            "{base}\n[relay]\nlisten = [\"127.0.0.1:{port}\"]\nallow_loopback_without_auth = true\naccount = \"work\"\n\n[state]\nkey_file = \"{}\"\n",
            key.display()
        ));
    };
    env.run(&["state", "rotate-key", a.to_str().expect("utf8")])
        .expect_code(0);
    with_key(&a);
    let daemon = env
        .cmd(&["daemon"])
        .env("MP_TEST_SECRET", stack.oauth.client_secret())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("daemon");
    wait_for_port(port, String::new);
    // The daemon has read the grant with key A (its start-up keep-alive check).
    std::thread::sleep(std::time::Duration::from_millis(500));
    env.run(&["state", "rotate-key", b.to_str().expect("utf8")])
        .expect_code(0);
    with_key(&b);
    std::process::Command::new("kill")
        .args(["-HUP", &daemon.id().to_string()])
        .status()
        .expect("kill -HUP");
    std::thread::sleep(std::time::Duration::from_millis(500));
    relay_message(port, &user, &rcpt, "sealed with b");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !stack
        .delivered(&rcpt)
        .iter()
        .any(|m| String::from_utf8_lossy(m).contains("Subject: sealed with b"))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the message relayed after the key change was not delivered"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    std::process::Command::new("kill")
        .args(["-TERM", &daemon.id().to_string()])
        .status()
        .expect("kill");
    let out = daemon.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("sealed with key"), "{stderr}");
}
