//! The token lifecycle through `auth import|token|status|refresh|logout`.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use crate::support::{Fault, OAuthServer, TestEnv};

/// Ten `auth token` runs within a token's lifetime make no request after the import's one.
#[test]
fn cached_token_is_reused() {
    let server = OAuthServer::start();
    let env = TestEnv::new();
    env.config_for(&server, "");
    env.import(&server);
    assert_eq!(
        server.refresh_count(),
        1,
        "import proves the token with one refresh"
    );
    let expected = server.last_access_token().expect("issued");
    for _ in 0..10 {
        let run = env.run_with_secret(&server, &["auth", "token", "work"]);
        run.expect_code(0);
        assert_eq!(run.stdout, format!("{expected}\n"));
    }
    assert_eq!(server.refresh_count(), 1);
}

/// Sixteen processes started together with an expiring token make exactly one refresh request,
/// all print the same new token, and the store holds the rotated refresh token.
#[test]
fn concurrent_processes_refresh_once() {
    let server = OAuthServer::start();
    let env = TestEnv::new();
    env.config_for(&server, "");
    server.set_expires_in(1);
    env.import(&server);
    std::thread::sleep(Duration::from_millis(1100)); // expired: every process wants a refresh
    server.set_expires_in(3600);
    server.set_rotation(true);
    let before = server.refresh_count();
    let children: Vec<_> = (0..16)
        .map(|_| {
            let mut cmd = env.cmd(&["auth", "token", "work"]);
            cmd.env("MP_TEST_SECRET", server.client_secret())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            cmd.spawn().expect("spawn")
        })
        .collect();
    let outputs: Vec<_> = children
        .into_iter()
        .map(|c| c.wait_with_output().expect("wait"))
        .collect();
    for out in &outputs {
        assert!(
            out.status.success(),
            "stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(
        server.refresh_count() - before,
        1,
        "exactly one refresh request"
    );
    let newest = server.last_access_token().expect("issued");
    for out in &outputs {
        assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{newest}\n"));
    }
    let stored = env.token_json("work");
    assert_eq!(
        server.live_refresh_tokens(),
        [stored["refresh_token"].as_str().expect("rt").to_string()]
    );
    assert_eq!(stored["access_token"], newest.as_str());
}

/// A response without `refresh_token` keeps the old one; a rotated one replaces it.
#[test]
fn rotation_and_keeping() {
    let server = OAuthServer::start();
    let env = TestEnv::new();
    env.config_for(&server, "");
    let rt = env.import(&server);
    assert_eq!(env.token_json("work")["refresh_token"], rt.as_str());

    env.run_with_secret(&server, &["auth", "refresh", "work", "--force"])
        .expect_code(0);
    assert_eq!(
        env.token_json("work")["refresh_token"],
        rt.as_str(),
        "no rotation: old token kept"
    );

    server.set_rotation(true);
    env.run_with_secret(&server, &["auth", "refresh", "work", "--force"])
        .expect_code(0);
    let rotated = env.token_json("work")["refresh_token"]
        .as_str()
        .expect("rt")
        .to_string();
    assert_ne!(rotated, rt);
    assert_eq!(server.live_refresh_tokens(), std::slice::from_ref(&rotated));
    // The rotated token works for the next refresh (the old one is dead at the server).
    env.run_with_secret(&server, &["auth", "refresh", "work", "--force"])
        .expect_code(0);
}

/// `invalid_grant` exits 77 with the provider's description and the fix, leaving the file alone.
#[test]
fn invalid_grant_needs_authorization() {
    let server = OAuthServer::start();
    let env = TestEnv::new();
    env.config_for(&server, "");
    env.import(&server);
    let before = fs::read(env.token_file("work")).expect("token file");
    server.revoke_all();
    let run = env.run_with_secret(&server, &["auth", "token", "work", "--force"]);
    run.expect_code(77);
    assert_eq!(run.stdout, "");
    assert_eq!(
        run.stderr,
        "error: account \"work\" needs authorization: the token endpoint refused the refresh (invalid_grant: Token has been expired or revoked.)\n\
         hint: the grant was revoked or has expired; sign in again with `mailpilot auth login work`\n"
    );
    assert_eq!(
        fs::read(env.token_file("work")).expect("token file"),
        before
    );
    let status = env.run(&["auth", "status", "work"]);
    assert!(
        status.stdout.contains("[needs_authorization]"),
        "{}",
        status.stdout
    );
}

fn transient_case(fault: Fault, extra: &str, expect_in_stderr: &str) {
    let server = OAuthServer::start();
    let env = TestEnv::new();
    env.config_for(&server, extra);
    env.import(&server);
    let before = fs::read(env.token_file("work")).expect("token file");
    server.set_fault(fault);
    let run = env.run_with_secret(&server, &["auth", "token", "work", "--force"]);
    run.expect_code(75);
    assert!(
        run.stderr.starts_with(
            "error: could not get an access token for account \"work\" (temporary; retry later): "
        ),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains(expect_in_stderr),
        "want {expect_in_stderr:?} in:\n{}",
        run.stderr
    );
    assert_eq!(
        fs::read(env.token_file("work")).expect("token file"),
        before,
        "token file untouched"
    );
    // And the grant still works once the server recovers.
    server.set_fault(Fault::None);
    env.run_with_secret(&server, &["auth", "token", "work", "--force"])
        .expect_code(0);
}

/// HTTP 500 is transient.
#[test]
fn server_error_is_transient() {
    transient_case(
        Fault::Http(500, "text/html", "<h1>oops</h1>"),
        "",
        "answered HTTP 500 with a body that is not a token response",
    );
}

/// 503 with an OAuth error body is transient too.
#[test]
fn unavailable_with_oauth_body_is_transient() {
    transient_case(
        Fault::Http(
            503,
            "application/json",
            r#"{"error":"temporarily_unavailable"}"#,
        ),
        "",
        "answered HTTP 503 (temporarily_unavailable)",
    );
}

/// A hanging endpoint times out (after `token_timeout`) and is transient.
#[test]
fn timeout_is_transient() {
    let started = Instant::now();
    transient_case(
        Fault::Hang(Duration::from_secs(10)),
        "token_timeout = \"1s\"",
        "timed out after 1s",
    );
    assert!(
        started.elapsed() < Duration::from_secs(9),
        "the timeout applied"
    );
}

/// A garbage 200 body is transient.
#[test]
fn garbage_is_transient() {
    transient_case(
        Fault::Garbage,
        "",
        "answered HTTP 200 with a body that is not a token response",
    );
}

/// A connection closed without an answer is transient.
#[test]
fn reset_is_transient() {
    transient_case(Fault::Reset, "", "caused by:");
}

/// A refused connection is transient, names the URL, and leaves the grant alone.
#[test]
fn connection_refused_is_transient() {
    let server = OAuthServer::start();
    let env = TestEnv::new();
    env.config_for(&server, "");
    env.import(&server);
    let before = fs::read(env.token_file("work")).expect("token file");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let text = fs::read_to_string(env.config_path())
        .expect("config")
        .replace(
            &server.token_url(),
            &format!("http://127.0.0.1:{port}/token"),
        );
    env.write_config(&text);
    let run = env.run_with_secret(&server, &["auth", "token", "work", "--force"]);
    run.expect_code(75);
    assert!(
        run.stderr.contains(&format!(
            "the request to http://127.0.0.1:{port}/token failed"
        )),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.to_lowercase().contains("connection refused"),
        "{}",
        run.stderr
    );
    assert_eq!(
        fs::read(env.token_file("work")).expect("token file"),
        before
    );
}

/// A process killed while its refresh hangs leaves the old tokens readable; the next run works.
#[test]
fn killed_during_refresh_leaves_store_intact() {
    let server = OAuthServer::start();
    let env = TestEnv::new();
    env.config_for(&server, "");
    env.import(&server);
    let before = fs::read(env.token_file("work")).expect("token file");
    server.set_fault(Fault::Hang(Duration::from_secs(20)));
    let count = server.refresh_count();
    let mut cmd = env.cmd(&["auth", "token", "work", "--force"]);
    cmd.env("MP_TEST_SECRET", server.client_secret());
    let mut child = cmd.spawn().expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.refresh_count() == count {
        assert!(
            Instant::now() < deadline,
            "the refresh request never arrived"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
    assert_eq!(
        fs::read(env.token_file("work")).expect("token file"),
        before
    );
    server.set_fault(Fault::None);
    let run = env.run_with_secret(&server, &["auth", "token", "work", "--force"]);
    run.expect_code(0);
    assert_eq!(
        run.stdout.trim(),
        server.last_access_token().expect("issued")
    );
}

/// Token files are 0600 in a 0700 directory, with absolute expiry and the documented fields.
#[test]
fn token_file_modes_and_shape() {
    let server = OAuthServer::start();
    let env = TestEnv::new();
    env.config_for(&server, "");
    env.import(&server);
    let mode = |p: &std::path::Path| fs::metadata(p).expect("meta").permissions().mode() & 0o777;
    assert_eq!(mode(&env.token_file("work")), 0o600);
    assert_eq!(mode(&env.state_dir().join("tokens")), 0o700);
    assert_eq!(mode(&env.state_dir()), 0o700);
    let json = env.token_json("work");
    assert_eq!(json["version"], 1);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("now")
        .as_secs();
    let expires_at = json["expires_at"].as_u64().expect("expires_at");
    assert!(
        (now + 3590..=now + 3600).contains(&expires_at),
        "absolute expiry: {expires_at} vs now {now}"
    );
    for key in [
        "access_token",
        "refresh_token",
        "obtained_at",
        "refreshed_at",
        "account",
    ] {
        assert!(json.get(key).is_some(), "{key} in {json}");
    }
}

/// `auth status` reports the grant; `--json` has the schema fields; no secrets in either.
#[test]
fn status_reports_grant() {
    let server = OAuthServer::start();
    let env = TestEnv::new();
    env.config_for(&server, "");
    let run = env.run(&["auth", "status"]);
    run.expect_code(0);
    assert!(
        run.stdout.contains("refresh token:  none"),
        "{}",
        run.stdout
    );
    env.import(&server);
    let run = env.run(&["auth", "status"]);
    run.expect_code(0);
    assert!(
        run.stdout.starts_with("work (custom, ops@example.com)\n"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("access token:   valid for 1h (until ")
            || run.stdout.contains("access token:   valid for 59m"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("last error:     none"),
        "{}",
        run.stdout
    );
    let run = env.run(&["auth", "status", "--json"]);
    let json: serde_json::Value = serde_json::from_str(&run.stdout).expect("json");
    assert_eq!(json["version"], 1);
    assert_eq!(json["accounts"][0]["has_refresh_token"], true);
    assert!(
        json["accounts"][0]["access_token_expires_in"]
            .as_i64()
            .expect("secs")
            > 3500
    );
    for secret in server.all_secrets() {
        assert!(!run.stdout.contains(&secret));
    }
}

/// `--if-older-than` skips a recent grant and refreshes an old one; `--force` always refreshes.
#[test]
fn keep_alive_refresh() {
    let server = OAuthServer::start();
    let env = TestEnv::new();
    env.config_for(&server, "");
    env.import(&server);
    let count = server.refresh_count();
    let run = env.run_with_secret(&server, &["auth", "refresh", "--if-older-than", "7d"]);
    run.expect_code(0);
    // "0s ago", or "1s" when the machine is slow between the import and this run.
    assert!(
        run.stderr.contains("work: last refreshed ")
            && run.stderr.contains("s ago; not refreshing"),
        "{}",
        run.stderr
    );
    assert_eq!(server.refresh_count(), count);
    // Age the grant by rewriting refreshed_at, as 8 days of disuse would.
    let mut json = env.token_json("work");
    json["refreshed_at"] =
        serde_json::json!(json["refreshed_at"].as_u64().expect("t") - 8 * 86_400);
    fs::write(env.token_file("work"), json.to_string()).expect("write");
    let run = env.run_with_secret(
        &server,
        &["auth", "refresh", "--if-older-than", "7d", "--json"],
    );
    run.expect_code(0);
    assert_eq!(server.refresh_count(), count + 1);
    let out: serde_json::Value = serde_json::from_str(&run.stdout).expect("json");
    assert_eq!(out["accounts"][0]["result"], "refreshed");
}

/// `auth logout` deletes the grant; the next `auth token` needs authorization.
#[test]
fn logout_then_token_needs_login() {
    let server = OAuthServer::start();
    let env = TestEnv::new();
    env.config_for(&server, "");
    env.import(&server);
    env.run(&["auth", "logout", "work"]).expect_code(0);
    assert!(!env.token_file("work").exists());
    let run = env.run(&["auth", "token", "work"]);
    run.expect_code(77);
    assert_eq!(
        run.stderr,
        "error: account \"work\" needs authorization: no token is stored for it\nhint: run `mailpilot auth login work`\n"
    );
}

/// A rejected import stores nothing.
#[test]
fn failed_import_stores_nothing() {
    let server = OAuthServer::start();
    let env = TestEnv::new();
    env.config_for(&server, "");
    let run = env.run_stdin(&["auth", "import", "work"], "rt-not-a-real-token\n");
    // Without the secret in the environment the import cannot even authenticate the client.
    run.expect_code(1);
    assert!(run.stderr.contains("MP_TEST_SECRET"), "{}", run.stderr);
    assert!(!env.token_file("work").exists());
    let secret = server.client_secret();
    let run = env.run_full(
        &["auth", "import", "work"],
        &[("MP_TEST_SECRET", &secret)],
        Some("rt-not-a-real-token\n"),
    );
    run.expect_code(77);
    assert!(!env.token_file("work").exists());
    let run = env.run_stdin(&["auth", "import", "work"], "  \n");
    run.expect_code(2);
    assert!(
        run.stderr.starts_with("error: no refresh token on stdin"),
        "{}",
        run.stderr
    );
}

/// HTTP Basic client authentication per configuration; a custom server gets no scope on refresh
/// (RFC 6749 §6: the scopes granted).
#[test]
fn client_auth_and_scope_on_refresh() {
    let server = OAuthServer::start();
    let env = TestEnv::new();
    env.config_for(
        &server,
        "client_auth = \"basic\"\nscopes = [\"mail\", \"offline_access\"]",
    );
    env.import(&server);
    let seen = server.last_token_request().expect("request");
    assert!(
        seen.authorization
            .as_deref()
            .is_some_and(|a| a.starts_with("Basic ")),
        "{seen:?}"
    );
    assert!(!seen.form.contains_key("client_secret"));
    assert!(!seen.form.contains_key("scope"), "{seen:?}");

    // The Google preset authenticates in the body and sends no scope on refresh.
    let env = TestEnv::new();
    env.write_config(&format!(
        "[accounts.work]\nprovider = \"google\"\nemail = \"ops@example.com\"\nclient_id = \"test-client\"\nclient_secret_env = \"MP_TEST_SECRET\"\ntoken_url = \"{}\"\n",
        server.token_url()
    ));
    env.import(&server);
    let seen = server.last_token_request().expect("request");
    assert_eq!(seen.authorization, None);
    assert_eq!(
        seen.form.get("client_secret"),
        Some(&server.client_secret())
    );
    assert!(!seen.form.contains_key("scope"), "{seen:?}");
}

/// A public client (no secret configured) refreshes with just its id.
#[test]
fn public_client() {
    let server = OAuthServer::start();
    server.set_public_client();
    let env = TestEnv::new();
    env.write_config(&format!(
        "[accounts.work]\nprovider = \"custom\"\nemail = \"ops@example.com\"\nclient_id = \"test-client\"\ntoken_url = \"{}\"\n",
        server.token_url()
    ));
    env.import(&server);
    let run = env.run(&["auth", "token", "work", "--force"]);
    run.expect_code(0);
}

/// `--sasl` prints the base64 XOAUTH2 / OAUTHBEARER strings for the stored token.
#[test]
fn sasl_strings() {
    use base64::Engine;
    let server = OAuthServer::start();
    let env = TestEnv::new();
    env.config_for(
        &server,
        "[accounts.work.imap]\nhost = \"127.0.0.1\"\nport = 10993\n",
    );
    env.import(&server);
    let token = server.last_access_token().expect("issued");
    let decode = |s: &str| {
        String::from_utf8(
            base64::engine::general_purpose::STANDARD
                .decode(s.trim())
                .expect("b64"),
        )
        .expect("utf8")
    };
    let run = env.run(&["auth", "token", "work", "--sasl", "xoauth2"]);
    assert_eq!(
        decode(&run.stdout),
        format!("user=ops@example.com\x01auth=Bearer {token}\x01\x01")
    );
    let run = env.run(&["auth", "token", "work", "--sasl", "oauthbearer"]);
    assert_eq!(
        decode(&run.stdout),
        format!(
            "n,a=ops@example.com,\x01host=127.0.0.1\x01port=10993\x01auth=Bearer {token}\x01\x01"
        )
    );
}

/// Tokens that live no longer than the refresh margin (Keycloak's 5-minute default against the
/// 5-minute margin) are still reused: the margin is capped at half the token's lifetime.
#[test]
fn short_lived_tokens_are_reused() {
    let server = OAuthServer::start();
    server.set_expires_in(300);
    let env = TestEnv::new();
    env.config_for(&server, "");
    env.import(&server);
    let count = server.refresh_count();
    for _ in 0..5 {
        env.run_with_secret(&server, &["auth", "token", "work"])
            .expect_code(0);
    }
    assert_eq!(server.refresh_count(), count, "no refresh storm");
}
