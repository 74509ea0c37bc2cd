//! Identities made for programs (issue 12): an app's own credentials (OAuth2 client credentials,
//! as Microsoft 365 app-only), through the same token engine as a person's grant.

use std::fs;
use std::process::Stdio;

use crate::support::{MailStack, OAuthServer, TestEnv};

/// A config for account `work` as the app (client credentials) at `server`.
fn app_config(server: &OAuthServer, extra: &str) -> String {
    format!(
        r#"
[accounts.work]
provider = "custom"
grant = "client_credentials"
email = "ops@example.com"
client_id = "test-client"
client_secret_env = "MP_TEST_SECRET"
token_url = "{}"
{extra}
"#,
        server.token_url()
    )
}

/// A stack account's config turned into the app `client_id` (its own client at the shared test
/// server, so tests running together do not share an app).
fn app_on_stack(config: &str, client_id: &str) -> String {
    config
        .replace(
            "provider = \"custom\"",
            "provider = \"custom\"\ngrant = \"client_credentials\"",
        )
        .replace(
            "client_id = \"test-client\"",
            &format!("client_id = \"{client_id}\""),
        )
}

/// The app sends through Postfix and reads through Dovecot with its own token: no sign-in, no
/// refresh token, the token cached in the same store.
#[test]
fn app_sends_and_polls_without_a_person() {
    let stack = MailStack::get();
    let (env, user) = TestEnv::for_mailbox(stack, "appid");
    let config = fs::read_to_string(env.config_path()).expect("config");
    env.write_config(&app_on_stack(&config, "app-sends"));
    stack.oauth.add_app_client("app-sends", &user);
    let secret = stack.oauth.client_secret();
    let vars = [("MP_TEST_SECRET", secret.as_str())];
    env.run_full(
        &[
            "send",
            "--to",
            &user,
            "--subject",
            "from the app",
            "--text",
            "hi",
        ],
        &vars,
        None,
    )
    .expect_code(0);
    assert_eq!(stack.wait_delivered(&user, 1).len(), 1);
    let run = env.run_full(&["poll", "--all"], &vars, None);
    run.expect_code(0);
    let json: serde_json::Value = serde_json::from_str(run.stdout.trim()).expect("json");
    assert_eq!(json["subject"], "from the app");
    let token = env.token_json("work");
    assert_eq!(token["refresh_token"], "", "no refresh token is kept");
    assert!(token["access_token"]
        .as_str()
        .expect("access token")
        .starts_with("at-app-"));
    let status = env.run(&["auth", "status", "work"]);
    assert!(
        status
            .stdout
            .contains("the app itself (client credentials)"),
        "{}",
        status.stdout
    );
    env.run(&["status"]).expect_code(0);
}

/// Sixteen processes started together without a cached app token make one token request; the
/// same once it has expired.
#[test]
fn concurrent_app_runs_request_once() {
    let server = OAuthServer::start();
    server.set_app_mailbox(Some("ops@example.com"));
    let env = TestEnv::new();
    env.write_config(&app_config(&server, ""));
    let secret = server.client_secret();
    let burst = |env: &TestEnv| -> Vec<String> {
        let children: Vec<_> = (0..16)
            .map(|_| {
                env.cmd(&["auth", "token", "work"])
                    .env("MP_TEST_SECRET", &secret)
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("spawn")
            })
            .collect();
        children
            .into_iter()
            .map(|c| {
                let out = c.wait_with_output().expect("wait");
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                String::from_utf8_lossy(&out.stdout).into_owned()
            })
            .collect()
    };
    let tokens = burst(&env);
    assert_eq!(
        server.refresh_count(),
        1,
        "one token request for sixteen runs"
    );
    assert!(tokens.iter().all(|t| t == &tokens[0]));
    // Expire the cached token: again one request between them.
    let mut token = env.token_json("work");
    token["expires_at"] = 1.into();
    fs::write(env.token_file("work"), token.to_string()).expect("write");
    let again = burst(&env);
    assert_eq!(server.refresh_count(), 2);
    assert!(again.iter().all(|t| t == &again[0] && t != &tokens[0]));
}

/// Signing in makes no sense for an app: `auth login` and `auth import` say why (exit 2).
#[test]
fn apps_need_no_sign_in() {
    let server = OAuthServer::start();
    let env = TestEnv::new();
    env.write_config(&app_config(&server, ""));
    for args in [["auth", "login", "work"], ["auth", "import", "work"]] {
        let run = env.run(&args);
        run.expect_code(2);
        assert!(
            run.stderr
                .contains("uses grant = \"client_credentials\": the app gets its own tokens"),
            "{}",
            run.stderr
        );
    }
}

/// A rejected client secret is a person's job (77) with the fix, not a retry; so is an app
/// without a mailbox permission.
#[test]
fn rejected_app_credentials_say_what_to_fix() {
    let server = OAuthServer::start();
    server.set_app_mailbox(Some("ops@example.com"));
    let env = TestEnv::new();
    env.write_config(&app_config(&server, ""));
    let run = env.run_full(
        &["auth", "token", "work"],
        &[("MP_TEST_SECRET", "wrong")],
        None,
    );
    run.expect_code(77);
    assert!(
        run.stderr
            .contains("refused the app's credentials (invalid_client"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("hint: the app's client secret was rejected or has expired"),
        "{}",
        run.stderr
    );
    server.set_app_mailbox(None);
    let run = env.run_with_secret(&server, &["auth", "token", "work"]);
    run.expect_code(77);
    assert!(
        run.stderr
            .contains("hint: an administrator must grant admin consent"),
        "{}",
        run.stderr
    );
    let status = env.run(&["status"]);
    status.expect_code(77);
}

/// `config check` refuses an app without a secret, and a Microsoft app on a shared tenant or
/// without the `.default` scope; the Microsoft preset gives app accounts the `.default` scope.
#[test]
fn app_configs_are_checked() {
    let env = TestEnv::new();
    env.write_config(
        r#"
[accounts.nosecret]
provider = "custom"
grant = "client_credentials"
email = "a@example.com"
client_id = "id"
token_url = "https://auth.example.com/token"

[accounts.shared]
provider = "microsoft"
grant = "client_credentials"
email = "b@example.com"
client_id = "id"
client_secret_env = "X"
scopes = ["https://outlook.office365.com/IMAP.AccessAsApp"]

[accounts.nokey]
provider = "google"
grant = "service_account"
email = "c@example.com"

[accounts.mssa]
provider = "microsoft"
tenant = "contoso.com"
grant = "service_account"
email = "d@example.com"
service_account_file = "/nonexistent.json"
"#,
    );
    let run = env.run(&["config", "check"]);
    run.expect_code(2);
    for want in [
        "accounts.nosecret.grant: client_credentials needs the app's client secret",
        "accounts.shared.tenant: app-only tokens come from your own tenant, not \"common\"",
        "accounts.shared.scopes: client_credentials needs the resource's .default scope",
        "accounts.nokey.service_account_file: missing: the service account's JSON key file",
        "accounts.mssa.grant: service_account is Google's domain-wide delegation",
        "accounts.mssa.service_account_file: /nonexistent.json is not a readable file",
    ] {
        assert!(
            run.stderr.contains(want),
            "want {want:?} in:\n{}",
            run.stderr
        );
    }
    env.write_config(
        r#"
[accounts.m365]
provider = "microsoft"
tenant = "contoso.onmicrosoft.com"
grant = "client_credentials"
email = "shared@contoso.com"
client_id = "id"
client_secret_env = "X"
"#,
    );
    let run = env.run(&["--json", "config", "check"]);
    run.expect_code(0);
    let json: serde_json::Value = serde_json::from_str(&run.stdout).expect("json");
    assert_eq!(json["accounts"][0]["grant"], "client_credentials");
    assert_eq!(
        json["accounts"][0]["scopes"],
        serde_json::json!(["https://outlook.office365.com/.default"])
    );
}

/// Three identities kept apart: `email` is the mailbox and SASL user, `sign_in_as` the person
/// who signs in (the login hint), `from` the default From (`send --from` still wins).
#[test]
fn mailbox_signer_and_sender_are_kept_apart() {
    let server = OAuthServer::start();
    let env = TestEnv::new();
    env.write_config(&format!(
        r#"
[accounts.work]
provider = "custom"
email = "shared@example.com"
sign_in_as = "delegate@example.com"
from = "Team Inbox <shared@example.com>"
client_id = "test-client"
token_url = "{}"
auth_url = "{}"
"#,
        server.token_url(),
        server.auth_url()
    ));
    // Nothing is pasted: the login stops after showing the address it would open.
    let run = env.run(&["auth", "login", "work", "--paste", "--no-browser"]);
    run.expect_code(2);
    assert!(
        run.stderr.contains("login_hint=delegate%40example.com"),
        "{}",
        run.stderr
    );
    let send = |extra: &[&str]| {
        let mut args = vec![
            "send",
            "--dry-run",
            "--to",
            "a@example.com",
            "--subject",
            "s",
            "--text",
            "t",
        ];
        args.extend_from_slice(extra);
        env.run(&args)
    };
    let run = send(&[]);
    run.expect_code(0);
    assert!(
        run.stdout
            .contains("From: \"Team Inbox\" <shared@example.com>"),
        "{}",
        run.stdout
    );
    let run = send(&["--from", "other@example.com"]);
    run.expect_code(0);
    assert!(
        run.stdout.contains("From: other@example.com"),
        "{}",
        run.stdout
    );
    env.write_config(&format!(
        "[accounts.work]\nprovider = \"custom\"\nemail = \"a@example.com\"\nfrom = \"not an address\"\nclient_id = \"x\"\ntoken_url = \"{}\"\n",
        server.token_url()
    ));
    let run = env.run(&["config", "check"]);
    run.expect_code(2);
    assert!(
        run.stderr
            .contains("accounts.work.from: \"not an address\" is not an address"),
        "{}",
        run.stderr
    );
}

/// A key and certificate made by openssl in `dir` (`cert.pem`, `key.pem` 0600); returns the
/// public key as PKCS#1 DER for the test server.
fn app_certificate(dir: &std::path::Path, name: &str) -> Vec<u8> {
    app_certificate_for(dir, name, 30)
}

/// As [`app_certificate`], valid for `days`.
fn app_certificate_for(dir: &std::path::Path, name: &str, days: u32) -> Vec<u8> {
    let key = dir.join(format!("{name}.key.pem"));
    let cert = dir.join(format!("{name}.cert.pem"));
    let der = dir.join(format!("{name}.pub.der"));
    let ok = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl (scripts/install-test-deps.sh installs it)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    ok(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        &days.to_string(),
        "-subj",
        "/CN=mailpilot-app",
        "-keyout",
        key.to_str().expect("utf8"),
        "-out",
        cert.to_str().expect("utf8"),
    ]);
    ok(&[
        "rsa",
        "-in",
        key.to_str().expect("utf8"),
        "-RSAPublicKey_out",
        "-outform",
        "DER",
        "-out",
        der.to_str().expect("utf8"),
    ]);
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).expect("chmod");
    fs::read(der).expect("public key")
}

/// With a certificate instead of a secret the app signs a fresh assertion for every token
/// request (RS256, thumbprint, `aud`, short `exp`, new `jti`); a key that does not match the
/// registered certificate is a person's job (77) with the fix; a key others may read is refused.
#[test]
fn app_with_a_certificate_signs_its_requests() {
    let server = OAuthServer::start();
    server.set_app_mailbox(Some("ops@example.com"));
    let env = TestEnv::new();
    let public = app_certificate(env.root(), "app");
    server.set_app_public_key(public);
    let keys = |name: &str| {
        format!(
            "client_certificate_file = \"{root}/{name}.cert.pem\"\nclient_key_file = \"{root}/{name}.key.pem\"",
            root = env.root().display()
        )
    };
    let config =
        app_config(&server, &keys("app")).replace("client_secret_env = \"MP_TEST_SECRET\"\n", "");
    env.write_config(&config);
    let run = env.run(&["auth", "token", "work"]);
    run.expect_code(0);
    assert!(run.stdout.starts_with("at-app-"), "{}", run.stdout);
    let traced = env.run_full(
        &["-vvv", "auth", "token", "work", "--force"],
        &[("RUST_LOG", "trace")],
        None,
    );
    traced.expect_code(0);
    assert_eq!(
        server.assertions(),
        2,
        "a fresh assertion (new jti) each time"
    );
    let seen = server.last_token_request().expect("request");
    assert!(!seen.form.contains_key("client_secret"));
    let assertion = &seen.form["client_assertion"];
    let signature = assertion.rsplit('.').next().expect("signature");
    assert!(
        !traced.stderr.contains(signature) && !traced.stderr.contains(&assertion[..40]),
        "the assertion leaked at trace level"
    );
    // A key the provider does not know.
    app_certificate(env.root(), "other");
    env.write_config(&config.replace(&keys("app"), &keys("other")));
    let run = env.run(&["auth", "token", "work", "--force"]);
    run.expect_code(77);
    assert!(run.stderr.contains("AADSTS700027"), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("hint: the provider cannot verify the app's signed assertion"),
        "{}",
        run.stderr
    );
    // A private key others may read.
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(
        env.root().join("other.key.pem"),
        fs::Permissions::from_mode(0o644),
    )
    .expect("chmod");
    let run = env.run(&["auth", "token", "work", "--force"]);
    run.expect_code(1);
    assert!(
        run.stderr.contains("is readable by others (mode 644)"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("BEGIN"), "no key material in messages");
}

/// A mail server refusing the app's token for a mailbox the app was not given: after the one
/// refresh-and-retry, exit 77 naming the two Exchange steps, not a sign-in.
#[test]
fn app_refused_by_the_mailbox_names_the_exchange_steps() {
    let stack = MailStack::get();
    let (env, user) = TestEnv::for_mailbox(stack, "appdenied");
    let config = fs::read_to_string(env.config_path()).expect("config");
    env.write_config(&app_on_stack(&config, "app-denied"));
    // The app's tokens open another mailbox than this account's.
    stack
        .oauth
        .add_app_client("app-denied", &stack.user("appdenied-other"));
    let run = env.run_full(
        &["auth", "test", "work"],
        &[("MP_TEST_SECRET", &stack.oauth.client_secret())],
        None,
    );
    run.expect_code(77);
    assert!(run.stdout.contains("FAILED"), "{}", run.stdout);
    let status = env.run_full(
        &["send", "--to", &user, "--subject", "s", "--text", "t"],
        &[("MP_TEST_SECRET", &stack.oauth.client_secret())],
        None,
    );
    status.expect_code(77);
    assert!(
        status
            .stderr
            .contains("hint: the app's token does not open mailbox"),
        "{}",
        status.stderr
    );
    assert!(
        status.stderr.contains("Add-MailboxPermission"),
        "{}",
        status.stderr
    );
    assert!(!status.stderr.contains("auth login"), "{}", status.stderr);
}

/// A Google-style service account key file (JSON, 0600) in `dir` for `email`, its token URI the
/// test server; returns the public key for the server.
fn service_account_key(
    dir: &std::path::Path,
    email: &str,
    token_url: &str,
) -> (std::path::PathBuf, Vec<u8>) {
    let public = app_certificate(dir, "sa");
    let pem = fs::read_to_string(dir.join("sa.key.pem")).expect("key");
    let file = dir.join("sa.json");
    let json = serde_json::json!({
        "type": "service_account",
        "project_id": "p",
        "private_key_id": "k1",
        "private_key": pem,
        "client_email": email,
        "client_id": "1234567890",
        "token_uri": token_url,
    });
    fs::write(&file, json.to_string()).expect("write key file");
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).expect("chmod");
    (file, public)
}

/// A service account with domain-wide delegation acts for a Workspace user: it sends and reads
/// that user's mail with no sign-in; without delegation, for an unknown user, or with a deleted
/// key, exit 77 with the Admin-console or key fix; the key never shows, even at trace level.
#[test]
fn service_account_acts_for_a_user() {
    let stack = MailStack::get();
    let (env, user) = TestEnv::for_mailbox(stack, "svcacct");
    let robot = format!("robot-{}@proj.iam.gserviceaccount.test", std::process::id());
    let (key_file, public) = service_account_key(env.root(), &robot, &stack.oauth.token_url());
    stack
        .oauth
        .add_service_account(&robot, public.clone(), &[&user]);
    let config = fs::read_to_string(env.config_path()).expect("config");
    let config = config
        .replace(
            "provider = \"custom\"",
            &format!(
                "provider = \"custom\"\ngrant = \"service_account\"\nservice_account_file = \"{}\"\nscopes = [\"https://mail.google.com/\"]",
                key_file.display()
            ),
        )
        .replace("client_id = \"test-client\"\n", "")
        .replace("client_secret_env = \"MP_TEST_SECRET\"\n", "");
    env.write_config(&config);
    let traced = env.run_full(
        &[
            "-vvv",
            "send",
            "--to",
            &user,
            "--subject",
            "from the robot",
            "--text",
            "hi",
        ],
        &[("RUST_LOG", "trace")],
        None,
    );
    traced.expect_code(0);
    assert!(
        !traced.stderr.contains("BEGIN PRIVATE KEY"),
        "key material at trace level"
    );
    assert_eq!(stack.wait_delivered(&user, 1).len(), 1);
    let run = env.run(&["poll", "--all"]);
    run.expect_code(0);
    assert!(
        run.stdout.contains("\"subject\":\"from the robot\""),
        "{}",
        run.stdout
    );
    let expire = || {
        let mut token = env.token_json("work");
        token["expires_at"] = 1.into();
        fs::write(env.token_file("work"), token.to_string()).expect("write");
    };
    // No delegation for this client.
    stack.oauth.add_service_account(&robot, public.clone(), &[]);
    expire();
    let run = env.run(&["auth", "token", "work"]);
    run.expect_code(77);
    assert!(
        run.stderr
            .contains("hint: the service account's client ID is not authorised"),
        "{}",
        run.stderr
    );
    // Delegated, but not for this user.
    stack
        .oauth
        .add_service_account(&robot, public, &["someone-else@mailpilot.test"]);
    let run = env.run(&["auth", "token", "work"]);
    run.expect_code(77);
    assert!(
        run.stderr.contains("is not a user of the Workspace domain"),
        "{}",
        run.stderr
    );
    // The key was rotated: the server knows another one.
    let other = app_certificate(env.root(), "rotated");
    stack.oauth.add_service_account(&robot, other, &[&user]);
    let run = env.run(&["auth", "token", "work"]);
    run.expect_code(77);
    assert!(
        run.stderr
            .contains("the service account key was deleted or rotated"),
        "{}",
        run.stderr
    );
}

/// `auth status` shows when the app's certificate expires, and `status` fails (exit 1) from 14
/// days before, so monitoring asks for a new certificate in time.
#[test]
fn expiring_certificate_fails_the_status_check() {
    let server = OAuthServer::start();
    server.set_app_mailbox(Some("ops@example.com"));
    let env = TestEnv::new();
    for (days, code) in [(30, 0), (7, 1)] {
        server.set_app_public_key(app_certificate_for(env.root(), "app", days));
        let keys = format!(
            "client_certificate_file = \"{root}/app.cert.pem\"\nclient_key_file = \"{root}/app.key.pem\"",
            root = env.root().display()
        );
        env.write_config(
            &app_config(&server, &keys).replace("client_secret_env = \"MP_TEST_SECRET\"\n", ""),
        );
        env.run(&["auth", "token", "work", "--force"])
            .expect_code(0);
        let status = env.run(&["status"]);
        status.expect_code(code);
        if code == 1 {
            assert!(
                status.stdout.contains(
                    "account work: certificate-expiring the client certificate expires at"
                ),
                "{}",
                status.stdout
            );
        }
        let auth = env.run(&["auth", "status", "work"]);
        assert!(
            auth.stdout.contains("certificate:    valid until"),
            "{}",
            auth.stdout
        );
    }
}

/// Each way Entra refuses an app's credentials is exit 77 with its own fix, never 75.
#[test]
fn entra_refusals_of_an_app_name_their_fix() {
    let server = OAuthServer::start();
    server.set_app_mailbox(Some("ops@example.com"));
    let env = TestEnv::new();
    env.write_config(&app_config(&server, ""));
    for (code, description, hint) in [
        (
            "invalid_client",
            "AADSTS7000215: Invalid client secret provided.",
            "client secret was rejected or has expired",
        ),
        (
            "invalid_client",
            "AADSTS7000222: The provided client secret keys are expired.",
            "client secret was rejected or has expired",
        ),
        (
            "unauthorized_client",
            "AADSTS700016: Application not found in the directory.",
            "is not registered in this tenant",
        ),
        (
            "invalid_grant",
            "AADSTS65001: The user or administrator has not consented.",
            "must grant admin consent",
        ),
        (
            "invalid_client",
            "AADSTS700027: Client assertion failed signature validation.",
            "cannot verify the app's signed assertion",
        ),
    ] {
        let body = serde_json::json!({"error": code, "error_description": description});
        server.set_fault(crate::support::Fault::Json(400, body.to_string()));
        let run = env.run_with_secret(&server, &["auth", "token", "work", "--force"]);
        run.expect_code(77);
        assert!(
            run.stderr.contains(hint),
            "{description}: want {hint:?} in:\n{}",
            run.stderr
        );
    }
}

/// A delegate's own grant opens a shared mailbox: the delegate signs in (`sign_in_as`), the
/// shared mailbox is the SASL user and is read (`email`), and mail goes out with the shared
/// address as From (`from`).
#[test]
fn delegate_reads_and_sends_as_a_shared_mailbox() {
    let stack = MailStack::get();
    let (env, shared) = TestEnv::for_mailbox(stack, "shared");
    let delegate = stack.user("delegate");
    let rcpt = stack.user("shared-rcpt");
    stack.oauth.set_policy(
        &delegate,
        crate::support::Policy {
            delegate_of: Some(shared.clone()),
            ..Default::default()
        },
    );
    let config = fs::read_to_string(env.config_path()).expect("config");
    env.write_config(&config.replace(
        &format!("email = \"{shared}\""),
        &format!("email = \"{shared}\"\nsign_in_as = \"{delegate}\"\nfrom = \"Team <{shared}>\""),
    ));
    env.import_for(&stack.oauth, &delegate);
    stack.deliver(&shared, "INBOX", "for the team");
    let secret = stack.oauth.client_secret();
    let vars = [("MP_TEST_SECRET", secret.as_str())];
    let run = env.run_full(&["poll", "--all"], &vars, None);
    run.expect_code(0);
    assert!(
        run.stdout.contains("\"subject\":\"for the team\""),
        "{}",
        run.stdout
    );
    env.run_full(
        &["send", "--to", &rcpt, "--subject", "answer", "--text", "t"],
        &vars,
        None,
    )
    .expect_code(0);
    let sent = stack.wait_delivered(&rcpt, 1);
    let text = String::from_utf8_lossy(&sent[0]);
    assert!(text.contains(&format!("From: Team <{shared}>")), "{text}");
}
