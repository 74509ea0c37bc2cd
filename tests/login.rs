//! `auth login` (loopback, paste, device), `auth test` and `auth revoke`, driven non-interactively:
//! the test plays the browser and the user.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::support::oauth_server::DeviceState;
use crate::support::{MailStack, OAuthServer, TestEnv};

/// A custom account `work` on `server`, with `scopes = ["mail", "smtp"]` unless `extra` sets them.
fn config(env: &TestEnv, server: &OAuthServer, extra: &str) {
    let scopes = if extra.contains("scopes =") {
        ""
    } else {
        "scopes = [\"mail\", \"smtp\"]"
    };
    env.write_config(&format!(
        r#"
[accounts.work]
provider = "custom"
email = "ops@example.com"
client_id = "test-client"
client_secret_env = "MP_TEST_SECRET"
auth_url = "{}"
token_url = "{}"
device_url = "{}"
{scopes}
{extra}
"#,
        server.auth_url(),
        server.token_url(),
        server.device_url()
    ));
}

/// Starts `auth login work ARGS`, returning the child and a channel of its stderr lines.
fn start_login(
    env: &TestEnv,
    server: &OAuthServer,
    args: &[&str],
) -> (Child, mpsc::Receiver<String>) {
    let mut all = vec!["auth", "login", "work", "--no-browser", "--timeout", "30s"];
    all.extend_from_slice(args);
    let mut child = env
        .cmd(&all)
        .env("MP_TEST_SECRET", server.client_secret())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn login");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    (child, rx)
}

/// Waits for a stderr line containing `needle`; returns it and everything read so far.
fn wait_line(rx: &mpsc::Receiver<String>, needle: &str) -> (String, String) {
    let mut seen = String::new();
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("no line with {needle:?}; got:\n{seen}"));
        seen.push_str(&line);
        seen.push('\n');
        if line.contains(needle) {
            return (line, seen);
        }
    }
}

fn rest(rx: &mpsc::Receiver<String>) -> String {
    let mut s = String::new();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(5)) {
        s.push_str(&line);
        s.push('\n');
    }
    s
}

/// A plain HTTP GET, as a browser would make it; returns (status, Location header, body).
fn get(url: &str) -> (u16, Option<String>, String) {
    let rest = url.strip_prefix("http://").expect("http url");
    let (host, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_string()), |(h, p)| (h, format!("/{p}")));
    // As a browser does, try again when the connection is reset before an answer: under the full
    // suite's load a fresh loopback connection is now and then reset at once (the listener alive
    // and never seeing it).
    let mut text = String::new();
    for attempt in 1.. {
        let exchange = TcpStream::connect(host).and_then(|mut conn| {
            write!(
                conn,
                "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
            )?;
            text.clear();
            conn.read_to_string(&mut text)
        });
        match exchange {
            Ok(_) => break,
            Err(e) if attempt < 3 => {
                eprintln!("browser: {url}: {e}; trying again");
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("GET {url}: {e}"),
        }
    }
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let location = text
        .lines()
        .find_map(|l| l.strip_prefix("Location: "))
        .map(str::to_string);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, location, body)
}

/// The browser: open the authorization URL, follow the redirect to the loopback listener.
fn play_browser(url_line: &str) -> String {
    let url = url_line.trim();
    let (status, location, _) = get(url);
    assert_eq!(status, 302, "the authorization server redirects");
    location.expect("Location")
}

/// Loopback login with PKCE and state: tokens are stored, and `auth token` then works without a
/// new request to the token endpoint.
#[test]
fn loopback_login() {
    let server = OAuthServer::start();
    let env = TestEnv::new();
    config(&env, &server, "");
    let (child, rx) = start_login(&env, &server, &[]);
    let (url, _) = wait_line(&rx, "/authorize?");
    let redirect = play_browser(&url);
    assert!(redirect.starts_with("http://127.0.0.1:"), "{redirect}");
    let (status, _, page) = get(&redirect);
    assert_eq!(status, 200);
    assert!(page.contains("You can close this tab"), "{page}");
    let out = child.wait_with_output().expect("wait");
    let stderr = rest(&rx);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("signed in: stored the grant of account \"work\" (ops@example.com)"),
        "{stderr}"
    );
    let q = &server.authorize_requests()[0];
    assert_eq!(
        q.get("code_challenge_method").map(String::as_str),
        Some("S256")
    );
    assert!(q.get("code_challenge").is_some_and(|c| c.len() == 43));
    assert!(q.get("state").is_some_and(|s| s.len() >= 16));
    assert_eq!(q.get("scope").map(String::as_str), Some("mail smtp"));
    let json = env.token_json("work");
    assert!(json["refresh_token"]
        .as_str()
        .is_some_and(|t| t.starts_with("rt-")));
    let count = server.refresh_count();
    let run = env.run(&["auth", "token", "work"]);
    run.expect_code(0);
    assert_eq!(
        run.stdout.trim(),
        server.last_access_token().expect("issued")
    );
    assert_eq!(server.refresh_count(), count, "no new request");
}

/// A redirect whose state does not match is refused and nothing is stored.
#[test]
fn wrong_state_is_refused() {
    let server = OAuthServer::start();
    let env = TestEnv::new();
    config(&env, &server, "");
    let (child, rx) = start_login(&env, &server, &[]);
    let (url, _) = wait_line(&rx, "/authorize?");
    let redirect = play_browser(&url);
    let forged = redirect.replace("state=", "state=forged");
    get(&forged);
    let out = child.wait_with_output().expect("wait");
    let stderr = rest(&rx);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("error: the redirect's state does not match this login"),
        "{stderr}"
    );
    assert!(!env.token_file("work").exists());
}

/// The user refuses in the browser: a clear message, exit 77, nothing stored.
#[test]
fn access_denied_is_reported() {
    let server = OAuthServer::start();
    server.set_login("ops@example.com", true);
    let env = TestEnv::new();
    config(&env, &server, "");
    let (child, rx) = start_login(&env, &server, &[]);
    let (url, _) = wait_line(&rx, "/authorize?");
    get(&play_browser(&url));
    let out = child.wait_with_output().expect("wait");
    let stderr = rest(&rx);
    assert_eq!(out.status.code(), Some(77), "{stderr}");
    assert!(stderr.contains("error: account \"work\" needs authorization: the authorization was refused (access_denied: The user denied access)"), "{stderr}");
    assert!(!env.token_file("work").exists());
}

/// Headless: the URL is printed, the user pastes the final address back on stdin.
#[test]
fn paste_login() {
    let server = OAuthServer::start();
    let env = TestEnv::new();
    config(&env, &server, "");
    let (mut child, rx) = start_login(&env, &server, &["--paste", "--port", "8765"]);
    let (url, _) = wait_line(&rx, "/authorize?");
    let redirect = play_browser(&url);
    assert!(
        redirect.starts_with("http://127.0.0.1:8765/?code="),
        "{redirect}"
    );
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{redirect}\n").as_bytes())
        .expect("paste");
    let out = child.wait_with_output().expect("wait");
    let stderr = rest(&rx);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(env.token_file("work").exists());
}

/// Device flow: pending, slowed down, then approved.
#[test]
fn device_login_pending_then_approved() {
    let server = OAuthServer::start();
    let env = TestEnv::new();
    config(&env, &server, "");
    let (child, rx) = start_login(&env, &server, &["--device"]);
    let (line, _) = wait_line(&rx, "WDJB-");
    let code = line.trim().to_string();
    while server.device_polls() < 2 {
        std::thread::sleep(Duration::from_millis(100));
    }
    server.set_device(&code, DeviceState::Approved);
    let out = child.wait_with_output().expect("wait");
    let stderr = rest(&rx);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(server.device_polls() >= 3, "it kept polling while pending");
    assert!(env.token_file("work").exists());
}

/// Device flow refused or expired: exit 77 naming the reason, nothing stored.
#[test]
fn device_login_denied_or_expired() {
    for (state, reason) in [
        (DeviceState::Denied, "access_denied"),
        (DeviceState::Expired, "expired_token"),
    ] {
        let server = OAuthServer::start();
        let env = TestEnv::new();
        config(&env, &server, "");
        let (child, rx) = start_login(&env, &server, &["--device"]);
        let (line, _) = wait_line(&rx, "WDJB-");
        server.set_device(line.trim(), state);
        let out = child.wait_with_output().expect("wait");
        let stderr = rest(&rx);
        assert_eq!(out.status.code(), Some(77), "{stderr}");
        assert!(stderr.contains(reason), "{stderr}");
        assert!(!env.token_file("work").exists());
    }
}

/// Google refuses Gmail scopes in the device flow: said before anything starts.
#[test]
fn google_device_flow_refused() {
    let env = TestEnv::new();
    env.write_config(
        "[accounts.g]\nprovider = \"google\"\nemail = \"a@example.com\"\nclient_id = \"id\"\n",
    );
    let run = env.run(&["auth", "login", "g", "--device"]);
    run.expect_code(2);
    assert!(run.stderr.starts_with("error: Google does not allow Gmail scopes (https://mail.google.com/) in the device flow"), "{}", run.stderr);
}

/// A grant missing one of the account's scopes is reported by name.
#[test]
fn missing_scope_is_named() {
    let server = OAuthServer::start();
    server.set_granted_scope(Some("mail"));
    let env = TestEnv::new();
    config(&env, &server, "");
    let (child, rx) = start_login(&env, &server, &[]);
    let (url, _) = wait_line(&rx, "/authorize?");
    get(&play_browser(&url));
    let out = child.wait_with_output().expect("wait");
    let stderr = rest(&rx);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("warning: the server did not grant scope smtp: mail that needs it will be refused, and refreshes will not ask for it"),
        "{stderr}"
    );
}

/// Runs a loopback login of `work` to its end: returns its exit code and stderr.
fn login_to_end(env: &TestEnv, server: &OAuthServer) -> (Option<i32>, String) {
    let (child, rx) = start_login(env, server, &[]);
    let (url, _) = wait_line(&rx, "/authorize?");
    get(&play_browser(&url));
    let out = child.wait_with_output().expect("wait");
    (out.status.code(), rest(&rx))
}

/// OpenID Connect Core §11: `offline_access` brings a refresh token only with `prompt=consent`,
/// which mailpilot sends for it; a server that issues none gets a hint that is true for it.
#[test]
fn offline_access_asks_for_consent() {
    let server = OAuthServer::start();
    server.set_offline_only();
    let env = TestEnv::new();
    config(
        &env,
        &server,
        "scopes = [\"openid\", \"offline_access\", \"mail\"]",
    );
    let (code, stderr) = login_to_end(&env, &server);
    assert_eq!(code, Some(0), "{stderr}");
    let q = &server.authorize_requests()[0];
    assert_eq!(q.get("prompt").map(String::as_str), Some("consent"));
    assert!(env.token_json("work")["refresh_token"].is_string());

    // Without offline_access such a server issues no refresh token: nothing is stored, and the
    // hint names the fix.
    let env = TestEnv::new();
    config(&env, &server, "");
    let (code, stderr) = login_to_end(&env, &server);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(!server.authorize_requests()[1].contains_key("prompt"));
    assert!(
        stderr.contains("the provider issued no refresh token"),
        "{stderr}"
    );
    assert!(
        stderr.contains("hint: add \"offline_access\" to `scopes` of account \"work\""),
        "{stderr}"
    );
    assert!(!stderr.contains("mailpilot sends both"), "{stderr}");
    assert!(!env.token_file("work").exists());
}

/// A scope the user did not grant is named at login and never asked for again: Microsoft (which
/// needs `scope` on refresh) gets the granted ones, a custom server none; the strict server
/// refuses any ungranted scope on refresh with `invalid_scope`, so a refresh proves it.
#[test]
fn refresh_asks_only_for_granted_scopes() {
    let imap = "https://outlook.office.com/IMAP.AccessAsUser.All";
    let server = OAuthServer::start();
    server.set_offline_needs_consent(false);
    server.set_granted_scope(Some(&format!("offline_access {imap}")));
    let env = TestEnv::new();
    env.write_config(&format!(
        "[accounts.work]\nprovider = \"microsoft\"\nemail = \"ops@example.com\"\nclient_id = \"test-client\"\nclient_secret_env = \"MP_TEST_SECRET\"\nauth_url = \"{}\"\ntoken_url = \"{}\"\n",
        server.auth_url(),
        server.token_url()
    ));
    let (code, stderr) = login_to_end(&env, &server);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("warning: the server did not grant scope https://outlook.office.com/SMTP.Send: mail that needs it will be refused, and refreshes will not ask for it"),
        "{stderr}"
    );
    let refresh = ["auth", "refresh", "work", "--force"];
    let secret = server.client_secret();
    env.run_full(&refresh, &[("MP_TEST_SECRET", &secret)], None)
        .expect_code(0);
    let seen = server.last_token_request().expect("refresh");
    assert_eq!(
        seen.form.get("scope").map(String::as_str),
        Some(format!("offline_access {imap}").as_str())
    );

    server.set_granted_scope(Some("mail"));
    let env = TestEnv::new();
    config(&env, &server, "");
    let (code, stderr) = login_to_end(&env, &server);
    assert_eq!(code, Some(0), "{stderr}");
    env.run_full(&refresh, &[("MP_TEST_SECRET", &secret)], None)
        .expect_code(0);
    let seen = server.last_token_request().expect("refresh");
    assert_eq!(
        seen.form.get("grant_type").map(String::as_str),
        Some("refresh_token")
    );
    assert!(!seen.form.contains_key("scope"), "{seen:?}");
}

/// `auth revoke` calls the revocation endpoint as RFC 7009 asks — the client authenticated (in the
/// body, or Basic with `client_auth = "basic"`), `token_type_hint=refresh_token` — and forgets the
/// grant; a refused client keeps the grant and says why; without an endpoint it explains what to
/// do instead.
#[test]
fn revoke() {
    let server = OAuthServer::start();
    let secret = server.client_secret();
    let mut revoked = Vec::new();
    for auth in ["", "client_auth = \"basic\""] {
        let env = TestEnv::new();
        config(
            &env,
            &server,
            &format!("revoke_url = \"{}\"\n{auth}", server.revoke_url()),
        );
        revoked.push(env.import(&server));
        let wrong = env.run_full(
            &["auth", "revoke", "work"],
            &[("MP_TEST_SECRET", "wrong")],
            None,
        );
        wrong.expect_code(1);
        assert!(
            wrong.stderr.contains(
                "refused to revoke the grant (invalid_client: client authentication failed)"
            ),
            "{}",
            wrong.stderr
        );
        assert!(env.token_file("work").exists(), "the grant is kept");
        env.run_full(
            &["auth", "revoke", "work"],
            &[("MP_TEST_SECRET", &secret)],
            None,
        )
        .expect_code(0);
        assert!(!env.token_file("work").exists());
    }
    assert_eq!(server.revoked(), revoked);
    assert_eq!(server.revoke_hints(), ["refresh_token", "refresh_token"]);
    let env = TestEnv::new();
    config(&env, &server, "");
    env.import(&server);
    let run = env.run(&["auth", "revoke", "work"]);
    run.expect_code(1);
    assert!(
        run.stderr
            .contains("custom has no token revocation endpoint"),
        "{}",
        run.stderr
    );
    assert!(env.token_file("work").exists(), "nothing deleted");
}

/// `auth test` logs in to SMTP and IMAP and reports each; a revoked grant fails both with 77.
#[test]
fn auth_test_reports_each_server() {
    let stack = MailStack::get();
    let user = stack.user("authtest");
    let env = TestEnv::new();
    env.config_for_stack(
        stack,
        &user,
        (stack.ports.postfix_submission, "starttls", "xoauth2"),
        &stack.ca_file,
    );
    env.import_for(&stack.oauth, &user);
    let run = env.run_full(
        &["auth", "test", "work"],
        &[("MP_TEST_SECRET", &stack.oauth.client_secret())],
        None,
    );
    run.expect_code(0);
    let p = stack.ports;
    assert_eq!(
        run.stdout,
        format!(
            "smtp 127.0.0.1:{} (starttls, xoauth2): OK\nimap 127.0.0.1:{} (implicit, xoauth2): OK\n",
            p.postfix_submission, p.imaps
        )
    );
    stack.oauth.revoke_user(&user);
    let run = env.run_full(
        &["auth", "test", "work"],
        &[("MP_TEST_SECRET", &stack.oauth.client_secret())],
        None,
    );
    run.expect_code(77);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", run.stdout);
    assert!(
        lines[0].contains("FAILED: ") && lines[0].contains("status 401"),
        "{}",
        run.stdout
    );
    assert!(
        lines[1].contains("FAILED: ") && lines[1].contains("invalid_grant"),
        "{}",
        run.stdout
    );
}

/// The test helper's browser follows redirects as a browser would (sanity check of the harness).
#[test]
fn harness_browser_reads_location() {
    let server = OAuthServer::start();
    let (status, location, _) = get(&format!("{}?response_type=code&client_id=test-client&redirect_uri=http://127.0.0.1:9/&state=s&code_challenge=x&code_challenge_method=S256", server.auth_url()));
    assert_eq!(status, 302);
    assert!(location.is_some_and(|l| l.starts_with("http://127.0.0.1:9/?code=")));
}

/// A custom account configured with only its `issuer`.
fn issuer_config(env: &TestEnv, server: &OAuthServer, extra: &str) {
    env.write_config(&format!(
        "[accounts.work]\nprovider = \"custom\"\nemail = \"ops@example.com\"\nclient_id = \"test-client\"\nclient_secret_env = \"MP_TEST_SECRET\"\nissuer = \"{}\"\nscopes = [\"mail\"]\n{extra}\n",
        server.base_url()
    ));
}

/// Discovery: with only `issuer` set, the login, the refresh and the revocation find their
/// endpoints in the server's metadata, fetched once and cached in the state directory; `config
/// check` says where they come from.
#[test]
fn discovery_fills_endpoints() {
    let server = OAuthServer::start();
    let env = TestEnv::new();
    issuer_config(&env, &server, "");
    let check = env.run(&["config", "check"]);
    check.expect_code(0);
    assert!(
        check
            .stdout
            .contains("token_url:      (from the issuer's metadata)"),
        "{}",
        check.stdout
    );
    let (code, stderr) = login_to_end(&env, &server);
    assert_eq!(code, Some(0), "{stderr}");
    let secret = server.client_secret();
    let vars = [("MP_TEST_SECRET", secret.as_str())];
    env.run_full(&["auth", "refresh", "work", "--force"], &vars, None)
        .expect_code(0);
    let cache = std::fs::read_dir(env.state_dir().join("tokens/discovery"))
        .expect("cache dir")
        .count();
    assert_eq!(cache, 1);
    let rt = env.token_json("work")["refresh_token"]
        .as_str()
        .expect("rt")
        .to_string();
    env.run_full(&["auth", "revoke", "work"], &vars, None)
        .expect_code(0);
    assert_eq!(server.revoked(), [rt]);
    assert_eq!(
        server.discovery_requests(),
        1,
        "login, refresh and revoke share the first fetch"
    );

    // A server publishing only RFC 8414's document is found there.
    let server = OAuthServer::start();
    server.set_oauth_metadata_only();
    let env = TestEnv::new();
    issuer_config(&env, &server, "");
    env.import(&server);
    assert_eq!(server.discovery_requests(), 1);
}

/// Metadata that names another issuer is refused (exit 1, nothing stored), and an unreachable
/// issuer without a cached copy is a temporary failure (75).
#[test]
fn discovery_refusals() {
    let server = OAuthServer::start();
    server.set_metadata_issuer("https://other.example");
    let env = TestEnv::new();
    issuer_config(&env, &server, "");
    let rt = server.issue_grant("ops@example.com");
    let secret = server.client_secret();
    let run = env.run_full(
        &["auth", "import", "work"],
        &[("MP_TEST_SECRET", &secret)],
        Some(&rt),
    );
    run.expect_code(1);
    assert!(
        run.stderr.contains(&format!(
            "the metadata fetched for {} states another issuer, https://other.example",
            server.base_url()
        )),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("hint: check `issuer` of account \"work\""),
        "{}",
        run.stderr
    );
    assert!(!env.token_file("work").exists());

    let env = TestEnv::new();
    let port = crate::support::mailstack::free_port();
    env.write_config(&format!(
        "[accounts.work]\nprovider = \"custom\"\nemail = \"ops@example.com\"\nclient_id = \"test-client\"\nissuer = \"http://127.0.0.1:{port}\"\n"
    ));
    let run = env.run_stdin(&["auth", "import", "work"], "rt-x\n");
    run.expect_code(75);
    assert!(
        run.stderr.contains(&format!(
            "the metadata of http://127.0.0.1:{port} could not be fetched"
        )),
        "{}",
        run.stderr
    );
}

/// RFC 9207: an authorization response whose `iss` names another server (a mix-up attack) is
/// refused, as is one without `iss` from a server whose metadata promises it; nothing is stored.
#[test]
fn authorization_response_issuer_checked() {
    let server = OAuthServer::start();
    let env = TestEnv::new();
    issuer_config(&env, &server, "");
    server.set_redirect_iss(Some("https://evil.example"));
    let (code, stderr) = login_to_end(&env, &server);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "the authorization response comes from issuer https://evil.example instead of {}",
            server.base_url()
        )),
        "{stderr}"
    );
    assert!(!env.token_file("work").exists());
    server.set_redirect_iss(None);
    let (code, stderr) = login_to_end(&env, &server);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("the authorization response has no `iss` although"),
        "{stderr}"
    );
    assert!(!env.token_file("work").exists());
    server.set_redirect_iss(Some(&server.base_url()));
    let (code, stderr) = login_to_end(&env, &server);
    assert_eq!(code, Some(0), "{stderr}");
}

/// `auth_params` add to (and replace) the authorization parameters; `redirect_uri` is the
/// registered one (host and path kept, its port or a free one), accepted by the strict server's
/// exact redirect match at the code exchange.
#[test]
fn auth_params_and_redirect_uri() {
    let server = OAuthServer::start();
    let env = TestEnv::new();
    config(
        &env,
        &server,
        "scopes = [\"offline_access\", \"mail\"]\nredirect_uri = \"http://localhost/mailpilot/callback\"\nauth_params = { prompt = \"select_account consent\", acr_values = \"mfa\" }",
    );
    let (code, stderr) = login_to_end(&env, &server);
    assert_eq!(code, Some(0), "{stderr}");
    let q = &server.authorize_requests()[0];
    assert_eq!(
        q.get("prompt").map(String::as_str),
        Some("select_account consent")
    );
    assert_eq!(q.get("acr_values").map(String::as_str), Some("mfa"));
    let redirect = q.get("redirect_uri").expect("redirect_uri");
    assert!(
        redirect.starts_with("http://localhost:") && redirect.ends_with("/mailpilot/callback"),
        "{redirect}"
    );
    assert!(env.token_file("work").exists());
    // A port in redirect_uri that --port contradicts is a usage error.
    let env = TestEnv::new();
    config(&env, &server, "redirect_uri = \"http://127.0.0.1:8400/\"");
    let run = env.run_full(
        &["auth", "login", "work", "--port", "8401", "--no-browser"],
        &[("MP_TEST_SECRET", &server.client_secret())],
        None,
    );
    run.expect_code(2);
    assert!(
        run.stderr
            .contains("--port 8401 differs from the port of redirect_uri (8400)"),
        "{}",
        run.stderr
    );
}
