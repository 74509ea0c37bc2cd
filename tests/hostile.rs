//! Untrusted input never stops, floods or fools mailpilot: hostile token endpoints, mail servers,
//! messages, merge data, flags and files (issue 11). Each test fails without its fix.

use std::fs;

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
