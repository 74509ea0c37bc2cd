//! `mailpilot send` against the real servers: Postfix and Dovecot submission, XOAUTH2 and
//! OAUTHBEARER, STARTTLS and implicit TLS, and the token failure paths.

use std::fs;

use mail_parser::{MessageParser, MimeHeaders};

use crate::support::mailstack::{DEFER_DOMAIN, REJECT_DOMAIN};
use crate::support::{MailStack, Policy, Run, TestEnv};

const SECRET_VAR: &str = "MP_TEST_SECRET";

fn send(env: &TestEnv, stack: &MailStack, args: &[&str]) -> Run {
    let mut all = vec!["send"];
    all.extend_from_slice(args);
    env.run_full(&all, &[(SECRET_VAR, &stack.oauth.client_secret())], None)
}

/// A config for a fresh user of the stack sending through `smtp`; returns the env, the user and a
/// recipient mailbox.
fn setup(stack: &MailStack, test: &str, smtp: (u16, &str, &str)) -> (TestEnv, String, String) {
    let (user, rcpt) = (stack.user(test), stack.user(&format!("{test}-rcpt")));
    let env = TestEnv::new();
    env.config_for_stack(stack, &user, smtp, &stack.ca_file);
    (env, user, rcpt)
}

/// Bytes with every value, so any transfer-encoding damage shows.
fn binary_attachment(env: &TestEnv) -> (std::path::PathBuf, Vec<u8>) {
    let bytes: Vec<u8> = (0..4096u32).map(|i| (i * 7 % 256) as u8).collect();
    let path = env.root().join("report.pdf");
    fs::write(&path, &bytes).expect("write attachment");
    (path, bytes)
}

fn full_message_roundtrip(test: &str, smtp: (u16, &str, &str)) {
    let stack = MailStack::get();
    let (env, user, rcpt) = setup(stack, test, smtp);
    env.import_for(&stack.oauth, &user);
    let (attachment, bytes) = binary_attachment(&env);
    let html = env.root().join("body.html");
    fs::write(&html, "<h1>Nightly report</h1><p>All green ✓</p>").expect("write html");
    let run = send(
        &env,
        stack,
        &[
            "--to",
            &rcpt,
            "--subject",
            "Nightly report — ünïcode",
            "--text",
            "All green.\nSee attachment.",
            "--html-file",
            html.to_str().expect("utf8"),
            "--attach",
            attachment.to_str().expect("utf8"),
            "--header",
            "X-Job: nightly",
        ],
    );
    run.expect_code(0);
    assert!(
        run.stderr
            .contains("sent to 1 recipient via account \"work\""),
        "{}",
        run.stderr
    );
    let raw = stack.wait_delivered(&rcpt, 1).remove(0);
    let msg = MessageParser::default()
        .parse(&raw)
        .expect("parse delivered message");
    assert_eq!(msg.subject(), Some("Nightly report — ünïcode"));
    assert_eq!(
        msg.from().and_then(|f| f.first()).and_then(|a| a.address()),
        Some(user.as_str())
    );
    assert_eq!(msg.header_raw("X-Job").map(str::trim), Some("nightly"));
    assert_eq!(msg.text_body.len(), 1);
    assert_eq!(
        msg.body_text(0).as_deref().map(str::trim_end),
        Some("All green.\nSee attachment.")
    );
    assert_eq!(msg.html_body.len(), 1);
    assert!(msg.body_html(0).expect("html").contains("All green ✓"));
    let att = msg.attachments().next().expect("attachment");
    assert_eq!(att.attachment_name(), Some("report.pdf"));
    assert_eq!(att.content_type().map(|c| c.subtype()), Some(Some("pdf")));
    assert_eq!(att.contents(), bytes.as_slice(), "attachment bytes intact");
}

/// Postfix submission with STARTTLS and XOAUTH2 delivers subject, text, HTML alternative and a
/// binary attachment intact.
#[test]
fn postfix_starttls_xoauth2() {
    let stack = MailStack::get();
    full_message_roundtrip(
        "pf-starttls",
        (stack.ports.postfix_submission, "starttls", "xoauth2"),
    );
}

/// Postfix submissions with implicit TLS and OAUTHBEARER does the same.
#[test]
fn postfix_implicit_oauthbearer() {
    let stack = MailStack::get();
    full_message_roundtrip(
        "pf-implicit",
        (stack.ports.postfix_submissions, "implicit", "oauthbearer"),
    );
}

/// Dovecot submission (which relays to Postfix) with STARTTLS and OAUTHBEARER.
#[test]
fn dovecot_starttls_oauthbearer() {
    let stack = MailStack::get();
    full_message_roundtrip(
        "dc-starttls",
        (stack.ports.dovecot_submission, "starttls", "oauthbearer"),
    );
}

/// A token the server no longer accepts (its real lifetime ended early): the 334 challenge is
/// answered, the token refreshed exactly once, the login retried, the message delivered once.
#[test]
fn expired_at_server_refreshes_once() {
    let stack = MailStack::get();
    let (env, user, rcpt) = setup(
        stack,
        "expired",
        (stack.ports.postfix_submission, "starttls", "xoauth2"),
    );
    stack.oauth.set_policy(
        &user,
        Policy {
            real_lifetime: Some(0),
            ..Policy::default()
        },
    );
    env.import_for(&stack.oauth, &user);
    stack.oauth.set_policy(&user, Policy::default());
    let before = stack.oauth.refresh_count_for(&user);
    let run = send(
        &env,
        stack,
        &["--to", &rcpt, "--subject", "retry", "--text", "x", "-v"],
    );
    run.expect_code(0);
    assert!(
        run.stderr
            .contains("server rejected the access token; refreshing it once"),
        "{}",
        run.stderr
    );
    assert_eq!(
        stack.oauth.refresh_count_for(&user) - before,
        1,
        "exactly one refresh"
    );
    assert_eq!(stack.wait_delivered(&rcpt, 1).len(), 1);
}

/// A revoked grant: exit 77, naming the account and the decoded server reason, with the fix.
#[test]
fn revoked_grant_needs_authorization() {
    let stack = MailStack::get();
    let (env, user, rcpt) = setup(
        stack,
        "revoked",
        (stack.ports.postfix_submission, "starttls", "xoauth2"),
    );
    env.import_for(&stack.oauth, &user);
    stack.oauth.revoke_user(&user);
    let run = send(
        &env,
        stack,
        &["--to", &rcpt, "--subject", "x", "--text", "x"],
    );
    run.expect_code(77);
    let port = stack.ports.postfix_submission;
    assert!(
        run.stderr.starts_with(&format!(
            "error: 127.0.0.1:{port} rejected the access token of account \"work\" (status 401 (token invalid or expired), schemes bearer, required scope mail), and refreshing it failed\n  caused by: account \"work\" needs authorization: the token endpoint refused the refresh (invalid_grant: Token has been expired or revoked.)\nhint: "
        )),
        "{}",
        run.stderr
    );
    assert!(stack.delivered(&rcpt).is_empty());
}

/// Token validation down at the server (Dovecot submission: 454): exit 75, nothing delivered;
/// the retry after recovery delivers exactly one message.
#[test]
fn validation_down_is_transient() {
    let stack = MailStack::get();
    let (env, user, rcpt) = setup(
        stack,
        "valdown",
        (stack.ports.dovecot_submissions, "implicit", "xoauth2"),
    );
    env.import_for(&stack.oauth, &user);
    stack.oauth.set_policy(
        &user,
        Policy {
            introspection_down: true,
            ..Policy::default()
        },
    );
    let before = stack.oauth.refresh_count_for(&user);
    let run = send(
        &env,
        stack,
        &["--to", &rcpt, "--subject", "once", "--text", "x"],
    );
    run.expect_code(75);
    assert!(
        run.stderr
            .contains("the server could not check the token now: 454 4.7.0"),
        "{}",
        run.stderr
    );
    assert_eq!(
        stack.oauth.refresh_count_for(&user),
        before,
        "a temporary failure does not refresh"
    );
    stack.oauth.set_policy(&user, Policy::default());
    send(
        &env,
        stack,
        &["--to", &rcpt, "--subject", "once", "--text", "x"],
    )
    .expect_code(0);
    assert_eq!(stack.wait_delivered(&rcpt, 1).len(), 1);
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(stack.delivered(&rcpt).len(), 1, "nothing duplicated");
}

/// A 2,500-character access token (Microsoft-sized) works on every port and mechanism.
#[test]
fn long_token_every_port() {
    let stack = MailStack::get();
    let (user, rcpt) = (stack.user("longtoken"), stack.user("longtoken-rcpt"));
    stack.oauth.set_policy(
        &user,
        Policy {
            token_len: Some(2500),
            ..Policy::default()
        },
    );
    let env = TestEnv::new();
    let p = stack.ports;
    let setups = [
        (p.postfix_submission, "starttls", "xoauth2"),
        (p.postfix_submissions, "implicit", "oauthbearer"),
        (p.dovecot_submission, "starttls", "xoauth2"),
        (p.dovecot_submissions, "implicit", "oauthbearer"),
    ];
    for (i, smtp) in setups.iter().enumerate() {
        env.config_for_stack(stack, &user, *smtp, &stack.ca_file);
        if i == 0 {
            env.import_for(&stack.oauth, &user);
            assert_eq!(
                env.token_json("work")["access_token"]
                    .as_str()
                    .map(str::len),
                Some(2500)
            );
        }
        send(
            &env,
            stack,
            &[
                "--to",
                &rcpt,
                "--subject",
                &format!("long {i}"),
                "--text",
                "x",
            ],
        )
        .expect_code(0);
    }
    assert_eq!(stack.wait_delivered(&rcpt, 4).len(), 4);
}

/// A server certificate not signed by the configured CA: a clean error naming the server and
/// the cause, and no token ever reaches the server.
#[test]
fn untrusted_certificate_sends_no_auth() {
    let stack = MailStack::get();
    let (user, rcpt) = (stack.user("wrongca"), stack.user("wrongca-rcpt"));
    let env = TestEnv::new();
    for (port, tls) in [
        (stack.ports.postfix_submission, "starttls"),
        (stack.ports.postfix_submissions, "implicit"),
    ] {
        env.config_for_stack(stack, &user, (port, tls, "xoauth2"), &stack.wrong_ca_file);
        if !env.token_file("work").exists() {
            env.import_for(&stack.oauth, &user);
        }
        let run = send(
            &env,
            stack,
            &["--to", &rcpt, "--subject", "x", "--text", "x"],
        );
        run.expect_code(1);
        let what = if tls == "starttls" {
            "STARTTLS"
        } else {
            "connecting"
        };
        assert!(
            run.stderr.starts_with(&format!(
                "error: 127.0.0.1:{port}: {what} failed: the TLS handshake failed (invalid peer certificate: UnknownIssuer)\n"
            )),
            "{}",
            run.stderr
        );
        assert!(
            run.stderr
                .contains("hint: the server's certificate is not trusted"),
            "{}",
            run.stderr
        );
    }
    assert_eq!(
        stack.oauth.introspection_count_for(&user),
        0,
        "no AUTH reached the server"
    );
}

/// No token or secret in any output at trace level, through a rejected-then-refreshed login.
#[test]
fn nothing_leaks_at_trace_level() {
    let stack = MailStack::get();
    let (env, user, rcpt) = setup(
        stack,
        "leak",
        (stack.ports.dovecot_submission, "starttls", "oauthbearer"),
    );
    stack.oauth.set_policy(
        &user,
        Policy {
            real_lifetime: Some(0),
            ..Policy::default()
        },
    );
    env.import_for(&stack.oauth, &user);
    stack.oauth.set_policy(&user, Policy::default());
    let run = env.run_full(
        &[
            "send",
            "--to",
            &rcpt,
            "--subject",
            "x",
            "--text",
            "x",
            "-vvv",
        ],
        &[
            (SECRET_VAR, &stack.oauth.client_secret()),
            ("RUST_LOG", "trace"),
        ],
        None,
    );
    run.expect_code(0);
    assert!(
        run.stderr.contains("AUTH OAUTHBEARER [redacted]"),
        "protocol trace is on: {}",
        run.stderr
    );
    let out = format!("{}{}", run.stdout, run.stderr);
    for secret in stack.oauth.all_secrets() {
        assert!(!out.contains(&secret), "leaks {secret}");
    }
    // The SASL strings themselves (base64) must not appear either.
    let token = stack.oauth.last_access_token_for(&user).expect("token");
    for sasl in ["xoauth2", "oauthbearer"] {
        let s = env.run(&["auth", "token", "work", "--sasl", sasl]).stdout;
        assert!(!out.contains(s.trim()), "leaks the {sasl} string");
    }
    assert!(!out.contains(&token));
}

/// A recipient refused with 5xx fails the send (exit 1) with the server's reply; with 4xx it is
/// transient (exit 75); in both cases nothing is delivered to the other recipient.
#[test]
fn refused_recipients() {
    let stack = MailStack::get();
    let (env, user, rcpt) = setup(
        stack,
        "rcpt",
        (stack.ports.postfix_submission, "starttls", "xoauth2"),
    );
    env.import_for(&stack.oauth, &user);
    let bad = format!("nobody@{REJECT_DOMAIN}");
    let run = send(
        &env,
        stack,
        &["--to", &rcpt, "--to", &bad, "--subject", "x", "--text", "x"],
    );
    run.expect_code(1);
    assert!(run.stderr.contains("recipient <nobody@reject.mailpilot.test> refused: 550 5.1.1 <nobody@reject.mailpilot.test>: Recipient address rejected: no such mailbox here"), "{}", run.stderr);
    let later = format!("busy@{DEFER_DOMAIN}");
    let run = send(
        &env,
        stack,
        &[
            "--to",
            &rcpt,
            "--to",
            &later,
            "--subject",
            "x",
            "--text",
            "x",
        ],
    );
    run.expect_code(75);
    assert!(
        run.stderr
            .contains("recipient <busy@defer.mailpilot.test> refused: 450 4.2.1"),
        "{}",
        run.stderr
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(stack.delivered(&rcpt).is_empty(), "no partial delivery");
}

/// `--dry-run` prints the RFC 5322 message and needs no account when --from is given.
#[test]
fn dry_run_prints_message() {
    let env = TestEnv::new();
    let run = env.run_stdin(
        &[
            "send",
            "--dry-run",
            "--from",
            "Reports <r@example.com>",
            "--to",
            "a@example.com",
            "--bcc",
            "b@example.com",
            "--subject",
            "Hello",
        ],
        "body from stdin\n",
    );
    run.expect_code(0);
    assert!(
        run.stdout.contains("From: Reports <r@example.com>\r\n"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("Subject: Hello\r\n"));
    assert!(run.stdout.contains("body from stdin"));
    assert!(
        !run.stdout.contains("b@example.com"),
        "Bcc is not in the headers"
    );
    let run = env.run(&[
        "send",
        "--dry-run",
        "--from",
        "r@example.com",
        "--to",
        "not an address",
        "--text",
        "x",
    ]);
    run.expect_code(2);
    assert!(
        run.stderr
            .starts_with("error: --to \"not an address\" is not a valid address"),
        "{}",
        run.stderr
    );
}
