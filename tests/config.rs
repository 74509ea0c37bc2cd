//! Configuration errors through the binary: one test per class, asserting the exact report.

use crate::support::TestEnv;

const BASE: &str =
    "[accounts.work]\nprovider = \"google\"\nemail = \"ops@example.com\"\nclient_id = \"id\"\n";

fn check(config: &str) -> (i32, String) {
    let env = TestEnv::new();
    env.write_config(config);
    let run = env.run(&["config", "check"]);
    assert_eq!(run.stdout, "", "nothing on stdout for an invalid config");
    let path = env.config_path().display().to_string();
    (run.code, run.stderr.replace(&path, "CONFIG"))
}

fn assert_report(config: &str, problems: &[&str]) {
    let (code, stderr) = check(config);
    assert_eq!(code, 2, "{stderr}");
    let n = problems.len();
    let mut want = format!(
        "error: invalid configuration in CONFIG ({n} problem{})\n",
        if n == 1 { "" } else { "s" }
    );
    for p in problems {
        want.push_str(&format!("  {p}\n"));
    }
    assert_eq!(stderr, want);
}

/// Unknown keys get a "did you mean".
#[test]
fn unknown_key() {
    assert_report(
        &format!("{BASE}refresh_margn = \"5m\"\n"),
        &["accounts.work.refresh_margn: unknown key (did you mean `refresh_margin`?)"],
    );
}

/// Missing required keys are named.
#[test]
fn missing_key() {
    assert_report(
        "[accounts.work]\nprovider = \"google\"\nclient_id = \"id\"\n",
        &["accounts.work.email: missing (required)"],
    );
}

/// Wrong types name the key.
#[test]
fn wrong_type() {
    assert_report(
        &format!("{BASE}[accounts.work.imap]\nport = \"993\"\n"),
        &["accounts.work.imap.port: invalid type: string \"993\", expected i64"],
    );
}

/// Out-of-range ports.
#[test]
fn bad_port() {
    assert_report(
        &format!("{BASE}[accounts.work.smtp]\nport = 0\n"),
        &["accounts.work.smtp.port: 0 is not a port (expected 1..=65535)"],
    );
}

/// Unknown enumerated values.
#[test]
fn bad_choice() {
    assert_report(
        &format!("{BASE}[accounts.work.smtp]\ntls = \"startls\"\n"),
        &["accounts.work.smtp.tls: unknown value \"startls\" (expected one of \"implicit\", \"starttls\", \"none\"; did you mean \"starttls\"?)"],
    );
}

/// Durations.
#[test]
fn bad_duration() {
    assert_report(
        &format!("{BASE}refresh_margin = \"five minutes\"\n"),
        &["accounts.work.refresh_margin: \"five minutes\" is not a duration (write e.g. \"90s\", \"5m\", \"1h\")"],
    );
}

/// Syntax errors name line and column.
#[test]
fn syntax_error() {
    let (code, stderr) = check("[accounts.work]\nprovider = google\n");
    assert_eq!(code, 2);
    assert!(
        stderr.starts_with(
            "error: invalid configuration in CONFIG (1 problem)\n  line 2, column 12: "
        ),
        "{stderr}"
    );
}

/// Plain-text SMTP to a remote host is refused.
#[test]
fn tls_none_remote() {
    assert_report(
        &format!("{BASE}[accounts.work.smtp]\nhost = \"mail.example.com\"\ntls = \"none\"\n"),
        &["accounts.work.smtp.tls: \"none\" is allowed only to a loopback host (got \"mail.example.com\"): the token would cross the network in clear text"],
    );
}

/// Microsoft scope and mechanism mistakes.
#[test]
fn microsoft_mistakes() {
    assert_report(
        "[accounts.m]\nprovider = \"microsoft\"\nemail = \"a@contoso.com\"\nclient_id = \"id\"\nscopes = [\"offline_access\", \"https://outlook.office365.com/IMAP.AccessAsUser.All\"]\n[accounts.m.smtp]\nmechanism = \"oauthbearer\"\n",
        &[
            "accounts.m.scopes: \"https://outlook.office365.com/IMAP.AccessAsUser.All\" has the wrong host: Microsoft mail scopes are https://outlook.office.com/...",
            "accounts.m.smtp.mechanism: microsoft servers accept only \"xoauth2\"",
        ],
    );
}

/// An inline secret in a world-readable config is refused, without echoing it.
#[test]
fn inline_secret_world_readable() {
    let env = TestEnv::new();
    env.write_config_mode(
        &format!("{BASE}client_secret = \"GOCSPX-inline-secret\"\n"),
        0o644,
    );
    let run = env.run(&["config", "check"]);
    run.expect_code(2);
    assert!(run.stderr.contains("accounts.work.client_secret: an inline secret in a world-readable file is refused: run `chmod 600` on the config file"), "{}", run.stderr);
    assert!(!run.stderr.contains("GOCSPX-inline-secret"));
    // With mode 0600 it is accepted and shown redacted.
    env.write_config_mode(
        &format!("{BASE}client_secret = \"GOCSPX-inline-secret\"\n"),
        0o600,
    );
    let run = env.run(&["config", "check"]);
    run.expect_code(0);
    assert!(
        run.stdout
            .contains("client_secret:  inline in the config file [redacted]"),
        "{}",
        run.stdout
    );
    assert!(!run.stdout.contains("GOCSPX-inline-secret"));
}

/// Two secret sources conflict.
#[test]
fn two_secret_sources() {
    assert_report(
        &format!("{BASE}client_secret_env = \"A\"\nclient_secret_file = \"secret.txt\"\n"),
        &["accounts.work: give the client secret one way, not client_secret_env and client_secret_file"],
    );
}

/// Every problem of a file is reported at once.
#[test]
fn all_problems_at_once() {
    let (code, stderr) = check("[accounts.a]\nprovider = \"yahoo\"\n[accounts.b]\nprovider = \"google\"\nemail = \"x\"\nclient_id = \"id\"\n");
    assert_eq!(code, 2);
    assert_eq!(
        stderr,
        "error: invalid configuration in CONFIG (4 problems)\n  \
         accounts.a.provider: unknown value \"yahoo\" (expected one of \"google\", \"microsoft\", \"custom\")\n  \
         accounts.a.email: missing (required)\n  \
         accounts.a.client_id: missing (required)\n  \
         accounts.b.email: \"x\" is not an email address\n"
    );
}

/// A missing config file says where it looked and how to create one.
#[test]
fn missing_file() {
    let env = TestEnv::new();
    let run = env.run(&["config", "check"]);
    run.expect_code(2);
    let path = env.config_path().display().to_string();
    assert_eq!(
        run.stderr,
        format!("error: configuration file {path} not found\nhint: create {path} (start from examples/config.toml in the mailpilot repository) or pass --config FILE\n")
    );
}

/// An unknown account name lists the configured ones.
#[test]
fn unknown_account() {
    let env = TestEnv::new();
    env.write_config(BASE);
    let run = env.run(&["auth", "token", "wrok"]);
    run.expect_code(2);
    let path = env.config_path().display().to_string();
    assert_eq!(
        run.stderr,
        format!("error: no account named \"wrok\" in {path}\nhint: configured accounts: work\n")
    );
}

/// The shipped example config is valid, and `config check` shows the presets it resolves to.
#[test]
fn example_config_parses() {
    let env = TestEnv::new();
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/config.toml");
    let run = env.run(&["--config", example, "config", "check", "--json"]);
    run.expect_code(0);
    let json: serde_json::Value = serde_json::from_str(&run.stdout).expect("json");
    let accounts = json["accounts"].as_array().expect("accounts");
    let names: Vec<&str> = accounts
        .iter()
        .map(|a| a["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["gmail", "m365", "m365app", "selfhosted"]);
    assert_eq!(accounts[1]["smtp"]["host"], "smtp.office365.com");
    assert_eq!(accounts[1]["smtp"]["tls"], "starttls");
    assert_eq!(accounts[2]["grant"], "client_credentials");
    assert_eq!(
        accounts[2]["scopes"],
        serde_json::json!(["https://outlook.office365.com/.default"])
    );
}

/// Usage errors exit 2 through clap.
#[test]
fn usage_error_exit_code() {
    let env = TestEnv::new();
    let run = env.run(&["auth", "frobnicate"]);
    run.expect_code(2);
    assert!(
        run.stderr.contains("unrecognized subcommand 'frobnicate'"),
        "{}",
        run.stderr
    );
}

/// A device endpoint on a Google account is refused: Gmail scopes are not allowed there.
#[test]
fn google_device_url() {
    assert_report(
        &format!("{BASE}device_url = \"https://oauth2.googleapis.com/device/code\"\n"),
        &["accounts.work.device_url: Google does not allow Gmail scopes in the device flow; use `mailpilot auth login` (browser) or `--paste`"],
    );
}

/// `[sendmail]`: an unknown account, an alias that is no address, a misspelt word, a duration out
/// of range and an unknown key are each reported; a good table is shown by `config check`.
#[test]
fn sendmail_table() {
    assert_report(
        &format!(
            "{BASE}[sendmail]\naccount = \"wrok\"\nrewrite_from = \"alway\"\nmax_age = \"1s\"\nalias = 1\n[sendmail.aliases]\nroot = \"root\"\n"
        ),
        &[
            "sendmail.alias: unknown key (expected one of: account, aliases, rewrite_from, max_age, warn_after, drop_dir)",
            "sendmail.account: no account named \"wrok\" (accounts: work)",
            "sendmail.aliases.root: \"root\" is not a mail address (user@example.com)",
            "sendmail.rewrite_from: unknown value \"alway\" (expected one of \"auto\", \"always\", \"never\"; did you mean \"always\"?)",
            "sendmail.max_age: \"1s\" is out of range (1m to 30days)",
        ],
    );
    let env = TestEnv::new();
    env.write_config(&format!(
        "{BASE}[sendmail]\nrewrite_from = \"always\"\n[sendmail.aliases]\ndefault = \"ops@example.com\"\n"
    ));
    let run = env.run(&["config", "check"]);
    run.expect_code(0);
    assert!(
        run.stdout.contains("sendmail: account work, aliases [default → ops@example.com], rewrite_from always, max_age 5days, warn_after 1h"),
        "{}",
        run.stdout
    );
}

/// `[state]`: every problem of a database backend is reported with its key: an unknown backend,
/// a missing URL, a password inside the URL, two password sources, a schema that is not a plain
/// identifier, and database keys under the files backend.
#[test]
fn state_backend_rules() {
    assert_report(
        &format!("[state]\nbackend = \"sqlite\"\n{BASE}"),
        &["state.backend: unknown backend \"sqlite\": expected \"files\" or \"postgres\""],
    );
    assert_report(
        &format!("[state]\nbackend = \"postgres\"\n{BASE}"),
        &["state.url: backend = \"postgres\" needs url = \"postgresql://USER@HOST:PORT/DATABASE\""],
    );
    assert_report(
        &format!("[state]\nbackend = \"postgres\"\nurl = \"postgresql://u:hunter2@db/m\"\npassword_env = \"A\"\npassword_cmd = \"echo b\"\nschema = \"Mail-Pilot\"\n{BASE}"),
        &[
            "state.url: the URL holds a password: remove it and use password_env, password_file or password_cmd",
            "state: give the database password one way: password_env, password_file or password_cmd",
            "state.schema: \"Mail-Pilot\" is not a plain identifier: lowercase letters, digits and _, at most 63, not starting with a digit",
        ],
    );
    assert_report(
        &format!("[state]\nurl = \"postgresql://u@db/m\"\nschema = \"s\"\n{BASE}"),
        &[
            "state.url: only used with backend = \"postgres\"",
            "state.schema: only used with backend = \"postgres\"",
        ],
    );
}
