//! No secret reaches stdout/stderr at any log level, except the token `auth token` exists to print.

use crate::support::{OAuthServer, TestEnv};

fn assert_clean(server: &OAuthServer, what: &str, text: &str) {
    for secret in server.all_secrets() {
        assert!(!text.contains(&secret), "{what} leaks {secret}:\n{text}");
    }
}

/// At `RUST_LOG=trace -vvv`, import, refresh, status, token and failures print no secret.
#[test]
fn nothing_leaks_at_trace_level() {
    let server = OAuthServer::start();
    server.set_rotation(true);
    let env = TestEnv::new();
    env.config_for(&server, "");
    let rt = server.issue_grant("ops@example.com");
    let secret = server.client_secret();
    let traced = |args: &[&str], stdin: Option<&str>| {
        let args: Vec<&str> = args.iter().copied().chain(["-vvv"]).collect();
        let vars = [("RUST_LOG", "trace"), ("MP_TEST_SECRET", secret.as_str())];
        let run = env.run_full(&args, &vars, stdin);
        (run.stdout, run.stderr)
    };
    let (out, err) = traced(&["auth", "import", "work"], Some(&rt));
    assert!(
        err.contains("TRACE") || err.contains("DEBUG"),
        "trace logging is on: {err}"
    );
    assert_clean(&server, "import", &format!("{out}{err}"));
    let (out, err) = traced(&["auth", "refresh", "work", "--force"], None);
    assert_clean(&server, "refresh", &format!("{out}{err}"));
    let (out, err) = traced(&["auth", "status"], None);
    assert_clean(&server, "status", &format!("{out}{err}"));
    let (out, err) = traced(&["config", "check"], None);
    assert_clean(&server, "config check", &format!("{out}{err}"));
    let (out, err) = traced(&["auth", "token", "work", "--force"], None);
    assert_eq!(
        out.trim(),
        server.last_access_token().expect("issued"),
        "the token goes to stdout only"
    );
    assert_clean(&server, "token stderr", &err);
    server.revoke_all();
    let (out, err) = traced(&["auth", "token", "work", "--force"], None);
    assert!(err.contains("needs authorization"), "{err}");
    assert_clean(&server, "failure", &format!("{out}{err}"));
    let (_, err) = traced(&["auth", "status", "--json"], None);
    assert_clean(&server, "status json stderr", &err);
}
