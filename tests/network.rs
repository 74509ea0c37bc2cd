//! Networks between mailpilot and its servers: real proxies (tinyproxy for HTTP CONNECT,
//! microsocks for SOCKS5) carrying a refresh, a send and a poll; a token endpoint behind TLS with
//! a private CA (socat in front of the test OAuth server), trusted through `ca_file` or the
//! system trust store, refused clearly otherwise; `HTTPS_PROXY`/`NO_PROXY` for the OAuth
//! endpoints.

use crate::support::proxies::Proc;
use crate::support::{MailStack, OAuthServer, Run, TestEnv};

const SECRET_VAR: &str = "MP_TEST_SECRET";
const PROXY_PASSWORD: &str = "pr0xy-Secret-77";

/// A mailbox account on the stack whose connections go through `proxy`; grant imported.
fn account_behind(stack: &MailStack, test: &str, proxy: &str) -> (TestEnv, String) {
    let (env, user) = TestEnv::for_mailbox(stack, test);
    let text = std::fs::read_to_string(env.config_path()).expect("config");
    env.write_config(&text.replacen(
        "\n[accounts.work.smtp]",
        &format!("proxy = \"{proxy}\"\n\n[accounts.work.smtp]"),
        1,
    ));
    (env, user)
}

fn run(env: &TestEnv, stack: &MailStack, args: &[&str]) -> Run {
    env.run_full(args, &[(SECRET_VAR, &stack.oauth.client_secret())], None)
}

/// Through an HTTP CONNECT proxy and a SOCKS5 proxy (with credentials, names resolved by the
/// proxy or here): the grant's refresh, a send and a poll all work, and the proxy's own log shows
/// it carried the token endpoint, the SMTP and the IMAP connections.
#[test]
fn refresh_send_and_poll_through_proxies() {
    let stack = MailStack::get();
    let env_dir = tempfile::tempdir().expect("tmp");
    let auth = Some(("mp", PROXY_PASSWORD));
    let proxies = [
        (
            "proxy-connect",
            Proc::tinyproxy(env_dir.path(), auth),
            "http",
        ),
        (
            "proxy-socks5h",
            Proc::microsocks(env_dir.path(), auth),
            "socks5h",
        ),
        (
            "proxy-socks5",
            Proc::microsocks(env_dir.path(), None),
            "socks5",
        ),
    ];
    let oauth_port = stack
        .oauth
        .base_url()
        .rsplit(':')
        .next()
        .expect("port")
        .to_string();
    for (test, proxy, scheme) in &proxies {
        let creds = if *scheme == "socks5" {
            String::new()
        } else {
            format!("mp:{PROXY_PASSWORD}@")
        };
        let url = format!("{scheme}://{creds}127.0.0.1:{}", proxy.port);
        let (env, user) = account_behind(stack, test, &url);
        let rt = stack.oauth.issue_grant(&user);
        env.run_full(
            &["auth", "import", "work"],
            &[(SECRET_VAR, &stack.oauth.client_secret())],
            Some(&rt),
        )
        .expect_code(0);
        let sent = run(
            &env,
            stack,
            &[
                "send",
                "--to",
                &user,
                "--subject",
                &format!("via {test}"),
                "--text",
                "hi",
            ],
        );
        sent.expect_code(0);
        stack.wait_delivered(&user, 1);
        let polled = run(&env, stack, &["poll", "--all"]);
        polled.expect_code(0);
        assert!(
            polled.stdout.contains(&format!("via {test}")),
            "{}",
            polled.stdout
        );
        let log = proxy.log();
        for port in [
            oauth_port.clone(),
            stack.ports.postfix_submission.to_string(),
            stack.ports.imaps.to_string(),
        ] {
            assert!(
                log.contains(&format!("127.0.0.1:{port}")),
                "{test}: no connection to port {port} in the proxy's log:\n{log}"
            );
        }
        for output in [&sent.stderr, &polled.stderr] {
            assert!(!output.contains(PROXY_PASSWORD), "{output}");
        }
        let check = env.run(&["config", "check"]);
        assert!(
            check
                .stdout
                .contains(&format!("proxy:          {scheme}://")),
            "{}",
            check.stdout
        );
        assert!(!check.stdout.contains(PROXY_PASSWORD), "{}", check.stdout);
    }
}

/// A proxy that refuses (wrong SOCKS password, missing CONNECT credentials) fails the command
/// with 1 and says so, without echoing the password; a proxy that is down is temporary (75).
#[test]
fn proxy_refusals() {
    let stack = MailStack::get();
    let dir = tempfile::tempdir().expect("tmp");
    let socks = Proc::microsocks(dir.path(), Some(("mp", PROXY_PASSWORD)));
    let connect = Proc::tinyproxy(dir.path(), Some(("mp", PROXY_PASSWORD)));
    let down = crate::support::mailstack::free_port();
    let cases = [
        (
            format!(
                "socks5h://mp:wrong-{PROXY_PASSWORD}@127.0.0.1:{}",
                socks.port
            ),
            1,
            "the proxy refused the user name and password",
        ),
        (
            format!("http://127.0.0.1:{}", connect.port),
            1,
            "the proxy wants credentials (HTTP/1.",
        ),
        (
            format!("socks5://127.0.0.1:{down}"),
            75,
            &format!("proxy socks5://127.0.0.1:{down}: connecting failed") as &str,
        ),
    ];
    for (i, (url, code, message)) in cases.iter().enumerate() {
        let (env, user) = account_behind(stack, &format!("proxy-refused-{i}"), url);
        // The grant comes directly (no proxy for this step), so the send shows the SMTP path.
        let direct = std::fs::read_to_string(env.config_path())
            .expect("config")
            .replace(&format!("proxy = \"{url}\""), "proxy = \"direct\"");
        let behind = std::fs::read_to_string(env.config_path()).expect("config");
        env.write_config(&direct);
        env.import_for(&stack.oauth, &user);
        env.write_config(&behind);
        let sent = run(
            &env,
            stack,
            &["send", "--to", &user, "--subject", "never", "--text", "x"],
        );
        sent.expect_code(*code);
        assert!(sent.stderr.contains(message), "{}", sent.stderr);
        assert!(!sent.stderr.contains(PROXY_PASSWORD), "{}", sent.stderr);
    }
}

/// The test OAuth server behind TLS whose certificate the test CA signed.
struct TlsTokenEndpoint {
    server: OAuthServer,
    front: Proc,
    _dir: tempfile::TempDir,
}

impl TlsTokenEndpoint {
    fn start(stack: &MailStack) -> Self {
        let server = OAuthServer::start();
        let port: u16 = server
            .base_url()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port");
        let dir = tempfile::tempdir().expect("tmp");
        let tls = stack.ca_file.parent().expect("tls dir");
        let front = Proc::tls_front(
            dir.path(),
            port,
            &tls.join("server.crt"),
            &tls.join("server.key"),
        );
        Self {
            server,
            front,
            _dir: dir,
        }
    }

    fn token_url(&self) -> String {
        format!("https://127.0.0.1:{}/token", self.front.port)
    }

    fn config(&self, env: &TestEnv, extra: &str) {
        env.write_config(&format!(
            "[accounts.work]\nprovider = \"custom\"\nemail = \"ops@example.com\"\nclient_id = \"test-client\"\nclient_secret_env = \"{SECRET_VAR}\"\ntoken_url = \"{}\"\n{extra}\n",
            self.token_url()
        ));
    }

    /// `auth import` with a fresh grant and `vars` in the environment.
    fn import(&self, env: &TestEnv, vars: &[(&str, &str)]) -> Run {
        let rt = self.server.issue_grant("ops@example.com");
        let secret = self.server.client_secret();
        let mut all = vec![(SECRET_VAR, secret.as_str())];
        all.extend_from_slice(vars);
        env.run_full(&["auth", "import", "work"], &all, Some(&rt))
    }
}

/// A token endpoint signed by a private CA: refused with a clear TLS error naming `ca_file`
/// (exit 1: no retry fixes it); trusted with `ca_file`, or with the CA in the system trust store
/// (`SSL_CERT_FILE`).
#[test]
fn token_endpoint_with_private_ca() {
    let stack = MailStack::get();
    let endpoint = TlsTokenEndpoint::start(stack);
    let env = TestEnv::new();
    endpoint.config(&env, "");
    let run = endpoint.import(&env, &[]);
    run.expect_code(1);
    assert!(
        run.stderr.contains(&format!(
            "the TLS certificate of {} is not trusted (UnknownIssuer)",
            endpoint.token_url()
        )),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("hint: if a private CA or a TLS-inspecting proxy signed it, set ca_file"),
        "{}",
        run.stderr
    );
    assert!(!env.token_file("work").exists());

    endpoint.config(&env, &format!("ca_file = \"{}\"", stack.ca_file.display()));
    endpoint.import(&env, &[]).expect_code(0);

    let env = TestEnv::new();
    endpoint.config(&env, "");
    let ca = stack.ca_file.to_str().expect("utf8");
    endpoint
        .import(&env, &[("SSL_CERT_FILE", ca)])
        .expect_code(0);
}

/// Without a `proxy`, the OAuth endpoints honour `HTTPS_PROXY` (a CONNECT through tinyproxy,
/// which the log shows) and `NO_PROXY`.
#[test]
fn https_proxy_environment() {
    let stack = MailStack::get();
    let endpoint = TlsTokenEndpoint::start(stack);
    let dir = tempfile::tempdir().expect("tmp");
    let proxy = Proc::tinyproxy(dir.path(), None);
    let env = TestEnv::new();
    endpoint.config(&env, &format!("ca_file = \"{}\"", stack.ca_file.display()));
    let via = format!("http://127.0.0.1:{}", proxy.port);
    endpoint
        .import(&env, &[("HTTPS_PROXY", &via)])
        .expect_code(0);
    let target = format!("CONNECT 127.0.0.1:{}", endpoint.front.port);
    let log = proxy.log();
    assert_eq!(log.matches(&target).count(), 1, "{log}");
    endpoint
        .import(&env, &[("HTTPS_PROXY", &via), ("NO_PROXY", "127.0.0.1")])
        .expect_code(0);
    assert_eq!(proxy.log().matches(&target).count(), 1, "{}", proxy.log());
}
