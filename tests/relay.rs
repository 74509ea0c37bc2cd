//! `mailpilot relay` against real clients (Python's smtplib, swaks, Postfix as a relay client) and
//! the real Postfix and Dovecot behind it: what a program hands over with a password arrives in
//! the mailbox through the account's OAuth2 login; refusals send nothing; a `kill -9` loses no
//! message that got its 250.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mail_parser::MessageParser;

use crate::support::mailstack::{free_port, wait_for_port, POSTFIX_SERVICES};
use crate::support::{MailStack, TestEnv};

/// The relay user's password in every test.
const PASSWORD: &str = "s3cret-pass";

/// The stack's server certificate and key (SANs localhost and 127.0.0.1), for the relay's TLS.
fn stack_cert(stack: &MailStack) -> (PathBuf, PathBuf) {
    (
        stack.ca_file.with_file_name("server.crt"),
        stack.ca_file.with_file_name("server.key"),
    )
}

/// A test's setup: an account sending through Postfix, and a `[relay]` on a free port with TLS and
/// the user `app` (whose table `mailpilot relay passwd app` printed).
struct Setup {
    env: TestEnv,
    user: String,
    rcpt: String,
    port: u16,
}

impl Setup {
    fn new(stack: &MailStack, test: &str, relay_extra: &str) -> Setup {
        let (env, user, rcpt) = TestEnv::for_sendmail(stack, test, stack.ports.postfix_submission);
        let port = free_port();
        let passwd = env.run_full(
            &["relay", "passwd", "app"],
            &[],
            Some(&format!("{PASSWORD}\n")),
        );
        passwd.expect_code(0);
        assert!(
            passwd
                .stdout
                .starts_with("[relay.users.\"app\"]\npassword_hash = \"$argon2id$"),
            "{}",
            passwd.stdout
        );
        assert!(!passwd.stdout.contains(PASSWORD));
        let (cert, key) = stack_cert(stack);
        let mut text = fs::read_to_string(env.config_path()).expect("config");
        text.push_str(&format!(
            "\n[relay]\nlisten = [\"127.0.0.1:{port}\"]\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n{relay_extra}\n{}allowed_from = [\"{user}\", \"*@lab.mailpilot.test\"]\n",
            cert.display(),
            key.display(),
            passwd.stdout
        ));
        env.write_config(&text);
        Setup {
            env,
            user,
            rcpt,
            port,
        }
    }

    /// Starts `mailpilot ARGS` (`relay` or `daemon`) and waits until the relay accepts
    /// connections.
    fn start(&self, stack: &MailStack, args: &[&str]) -> Running {
        let mut child = self
            .env
            .cmd(args)
            .env("MP_TEST_SECRET", stack.oauth.client_secret())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the relay");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("stderr");
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut log = sink.lock().expect("log");
                log.push_str(&line);
                log.push('\n');
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("the relay exited ({status}):\n{}", log.lock().expect("log"));
            }
            assert!(Instant::now() < deadline, "the relay did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Running { child, log }
    }

    /// Runs a Python script with `port ca user rcpt` as its arguments; returns stdout (asserting
    /// exit 0).
    fn python(&self, stack: &MailStack, script: &str) -> String {
        let out = Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(self.port.to_string())
            .arg(&stack.ca_file)
            .arg(&self.user)
            .arg(&self.rcpt)
            .output()
            .expect("python3");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "python failed\nstdout:\n{stdout}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }
}

/// A running relay and what it printed so far.
struct Running {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Running {
    fn log(&self) -> String {
        self.log.lock().expect("log").clone()
    }

    /// Waits until the log has `n` lines containing `what`.
    fn wait_log(&self, what: &str, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.log().matches(what).count() < n {
            assert!(
                Instant::now() < deadline,
                "no {n}× {what:?} in the relay's log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM; the relay must stop with 0.
    fn stop(mut self) -> String {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        let status = self.child.wait().expect("wait");
        std::thread::sleep(Duration::from_millis(50));
        let log = self.log();
        assert_eq!(status.code(), Some(0), "{log}");
        log
    }

    fn kill9(mut self) {
        self.child.kill().expect("kill -9");
        self.child.wait().expect("wait");
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The subjects of the messages delivered to `rcpt`.
fn subjects(messages: &[Vec<u8>]) -> Vec<String> {
    let mut subjects: Vec<String> = messages
        .iter()
        .map(|m| {
            MessageParser::default()
                .parse(m)
                .and_then(|p| p.subject().map(str::to_string))
                .unwrap_or_default()
        })
        .collect();
    subjects.sort();
    subjects
}

const SMTPLIB_BOTH: &str = r#"
import smtplib, ssl, sys
port, ca, user, rcpt = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
ctx = ssl.create_default_context(cafile=ca)
def message(subject):
    return 'From: %s\r\nTo: %s\r\nSubject: %s\r\n\r\nhello from smtplib\r\n' % (user, rcpt, subject)
s = smtplib.SMTP('127.0.0.1', port, timeout=20)
s.ehlo()
print('before-tls auth offered:', 'auth' in s.esmtp_features)
print('before-tls AUTH:', s.docmd('AUTH', 'PLAIN AGFwcABzM2NyZXQtcGFzcw==')[0])
s.starttls(context=ctx)
s.ehlo()
print('after-tls auth:', s.esmtp_features.get('auth', '').strip())
print('plain:', s.login('app', 's3cret-pass')[0])
s.sendmail(user, [rcpt], message('relay plain'))
s.quit()
s = smtplib.SMTP('127.0.0.1', port, timeout=20)
s.starttls(context=ctx)
s.ehlo()
s.user, s.password = 'app', 's3cret-pass'
print('login:', s.auth('LOGIN', s.auth_login, initial_response_ok=False)[0])
s.sendmail(user, [rcpt], message('relay login'))
s.quit()
"#;

/// Python's smtplib delivers through the relay with AUTH PLAIN and with AUTH LOGIN, both after
/// STARTTLS (verified against the CA); AUTH is neither offered nor accepted before TLS.
#[test]
fn smtplib_plain_and_login_over_starttls() {
    let stack = MailStack::get();
    let setup = Setup::new(stack, "rlsmtplib", "");
    let relay = setup.start(stack, &["relay"]);
    let out = setup.python(stack, SMTPLIB_BOTH);
    assert!(out.contains("before-tls auth offered: False"), "{out}");
    assert!(out.contains("before-tls AUTH: 538"), "{out}");
    assert!(out.contains("after-tls auth: PLAIN LOGIN"), "{out}");
    assert!(
        out.contains("plain: 235") && out.contains("login: 235"),
        "{out}"
    );
    let delivered = stack.wait_delivered(&setup.rcpt, 2);
    assert_eq!(subjects(&delivered), ["relay login", "relay plain"]);
    let first = String::from_utf8_lossy(&delivered[0]).into_owned();
    // smtplib sent neither: the relay added them (Postfix's own Message-Id would not end so).
    assert!(
        first.contains("\nMessage-ID: <") && first.contains(".relay@mailpilot.test>"),
        "{first}"
    );
    assert!(first.contains("\nDate: "), "{first}");
    relay.wait_log("relay: queued", 2);
    let log = relay.stop();
    assert!(log.contains("from user \"app\" at 127.0.0.1:"), "{log}");
    assert!(log.contains("outbox, account \"work\": 1 sent"), "{log}");
    assert!(!log.contains(PASSWORD), "{log}");
}

/// With the state in PostgreSQL, the daemon's relay (its own thread and runtime) queues into the
/// database's outbox and the daemon's drain delivers from it: both messages arrive, the table is
/// empty afterwards and no outbox file was written.
#[test]
fn relay_into_the_state_database() {
    let stack = MailStack::get();
    let pg = crate::support::postgres::PgServer::shared();
    let setup = Setup::new(stack, "rlpg", "");
    let schema = format!("t_relay_{}", std::process::id());
    let state = pg.state_config(&schema, &setup.env.root().join("db-password"));
    let text = fs::read_to_string(setup.env.config_path()).expect("config");
    setup.env.write_config(&format!("{state}{text}"));
    setup.env.run(&["state", "init"]).expect_code(0);
    setup
        .env
        .run(&["state", "migrate", "--from", "files", "--to", "postgres"])
        .expect_code(0);
    let daemon = setup.start(stack, &["daemon"]);
    setup.python(stack, SMTPLIB_BOTH);
    let delivered = stack.wait_delivered(&setup.rcpt, 2);
    assert_eq!(subjects(&delivered), ["relay login", "relay plain"]);
    daemon.wait_log("relay: queued", 2);
    let count = format!("SELECT count(*) FROM {schema}.outbox");
    let deadline = Instant::now() + Duration::from_secs(10);
    while pg.psql("mailpilot", &count).trim() != "0" {
        assert!(Instant::now() < deadline, "the outbox table never emptied");
        std::thread::sleep(Duration::from_millis(50));
    }
    daemon.stop();
    assert!(
        !setup.env.state_dir().join("outbox").exists(),
        "no outbox files"
    );
}

/// swaks delivers through the relay: AUTH LOGIN after STARTTLS (as many appliances do), and AUTH
/// PLAIN on the implicit-TLS listener (`listen_tls`, port-465 style).
#[test]
fn swaks_starttls_and_implicit_tls() {
    let stack = MailStack::get();
    let tls_port = free_port();
    let setup = Setup::new(
        stack,
        "rlswaks",
        &format!("listen_tls = [\"127.0.0.1:{tls_port}\"]"),
    );
    let relay = setup.start(stack, &["relay"]);
    for (port, tls, mechanism) in [
        (setup.port, "--tls", "LOGIN"),
        (tls_port, "--tls-on-connect", "PLAIN"),
    ] {
        let out = Command::new("swaks")
            .args(["--server", "127.0.0.1", "--port", &port.to_string()])
            .args([tls, "--auth", mechanism, "--auth-user", "app"])
            .args(["--auth-password", PASSWORD])
            .args(["--from", &setup.user, "--to", &setup.rcpt])
            .args(["--header", &format!("Subject: via swaks {tls}")])
            .args(["--body", "sent by swaks"])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("swaks: {e}; install it with scripts/install-test-deps.sh"));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let delivered = stack.wait_delivered(&setup.rcpt, 2);
    assert_eq!(
        subjects(&delivered),
        ["via swaks --tls", "via swaks --tls-on-connect"]
    );
    assert!(String::from_utf8_lossy(&delivered[0]).contains("sent by swaks"));
    let log = relay.stop();
    assert!(
        log.contains(&format!("listening on 127.0.0.1:{tls_port} (implicit TLS)")),
        "{log}"
    );
}

/// A message the relay accepted but the provider refuses for good (550) lands in `failed/` with
/// the server's reason, as for sendmail; nothing is lost or retried forever.
#[test]
fn upstream_refusal_lands_in_failed() {
    let stack = MailStack::get();
    let setup = Setup::new(stack, "rlfailed", "");
    let relay = setup.start(stack, &["relay"]);
    let refused = format!("nobody@{}", crate::support::mailstack::REJECT_DOMAIN);
    let out = Command::new("swaks")
        .args(["--server", "127.0.0.1", "--port", &setup.port.to_string()])
        .args(["--tls", "--auth", "PLAIN", "--auth-user", "app"])
        .args(["--auth-password", PASSWORD])
        .args(["--from", &setup.user, "--to", &refused])
        .args(["--header", "Subject: refused upstream"])
        .stdin(Stdio::null())
        .output()
        .expect("swaks");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    relay.wait_log("refused for good", 1);
    let list = setup.env.run_full(&["queue", "list", "--json"], &[], None);
    let doc: serde_json::Value = serde_json::from_str(&list.stdout).expect("JSON");
    let messages = doc["messages"].as_array().expect("messages");
    assert_eq!(messages.len(), 1, "{doc}");
    assert_eq!(messages[0]["status"], "failed");
    assert!(
        messages[0]["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("550 5.1.1"),
        "{doc}"
    );
    relay.stop();
}

/// Hostile or broken clients are bounded: connections over max_connections get 421 at once; a
/// silent client is dropped after idle_timeout and one that trickles a command line after
/// command_timeout (421 4.4.2); a megabyte without a line end is skipped with 500 and the session
/// goes on.
#[test]
fn hostile_clients_are_bounded() {
    use std::io::{Read, Write};
    let stack = MailStack::get();
    let setup = Setup::new(
        stack,
        "rlhostile",
        "max_connections = 2\nidle_timeout = \"1s\"\ncommand_timeout = \"2s\"",
    );
    let relay = setup.start(stack, &["relay"]);
    let connect = || {
        let c = TcpStream::connect(("127.0.0.1", setup.port)).expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        c
    };
    let read_reply = |c: &mut TcpStream| {
        let mut buf = [0u8; 4096];
        let n = c.read(&mut buf).expect("read");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    // The readiness probe's connection may still hold a slot for a moment.
    std::thread::sleep(Duration::from_millis(200));
    let mut silent = connect();
    assert!(read_reply(&mut silent).starts_with("220 "));
    let mut trickle = connect();
    assert!(read_reply(&mut trickle).starts_with("220 "));
    let mut third = connect();
    assert!(read_reply(&mut third).starts_with("421 4.7.0 Too many connections"));
    let started = Instant::now();
    trickle.write_all(b"EHLO").expect("write");
    for _ in 0..6 {
        std::thread::sleep(Duration::from_millis(400));
        if trickle.write_all(b"x").is_err() {
            break;
        }
    }
    let silent_end = read_reply(&mut silent);
    assert!(silent_end.starts_with("421 4.4.2"), "{silent_end}");
    let trickle_end = read_reply(&mut trickle);
    assert!(trickle_end.starts_with("421 4.4.2"), "{trickle_end}");
    assert!(started.elapsed() < Duration::from_secs(4));
    let mut flood = connect();
    assert!(read_reply(&mut flood).starts_with("220 "));
    flood.write_all(&vec![b'A'; 1 << 20]).expect("flood");
    flood.write_all(b"\r\nNOOP\r\n").expect("write");
    let mut replies = String::new();
    while !replies.contains("250 ") {
        replies.push_str(&read_reply(&mut flood));
    }
    assert!(replies.starts_with("500 5.5.6 Line too long"), "{replies}");
    let log = relay.stop();
    assert!(log.contains("max_connections reached"), "{log}");
}

/// A second Postfix instance, the way sites chain their MTA: `relayhost` = the relay, SASL PLAIN,
/// TLS required. Stopped when dropped.
struct ClientPostfix {
    dir: tempfile::TempDir,
    port: u16,
}

impl ClientPostfix {
    fn start(stack: &MailStack, relay_port: u16) -> ClientPostfix {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        for sub in ["conf", "data", "spool"] {
            fs::create_dir_all(d.join(sub)).expect("mkdir");
        }
        let port = free_port();
        let main = format!(
            "compatibility_level = 3.6\n\
             queue_directory = {d}/spool\n\
             data_directory = {d}/data\n\
             mail_owner = postfix\n\
             setgid_group = postdrop\n\
             maillog_file = {d}/maillog\n\
             maillog_file_prefixes = {d}\n\
             inet_interfaces = 127.0.0.1\n\
             inet_protocols = ipv4\n\
             myhostname = client.mailpilot.test\n\
             mydomain = mailpilot.test\n\
             myorigin = mailpilot.test\n\
             mydestination =\n\
             mynetworks = 127.0.0.0/8\n\
             alias_maps =\n\
             alias_database =\n\
             smtpd_peername_lookup = no\n\
             smtp_host_lookup = native\n\
             smtpd_relay_restrictions = permit_mynetworks, reject\n\
             relayhost = [127.0.0.1]:{relay_port}\n\
             smtp_sasl_auth_enable = yes\n\
             smtp_sasl_password_maps = static:app:{PASSWORD}\n\
             smtp_sasl_security_options = noanonymous\n\
             smtp_sasl_mechanism_filter = plain\n\
             smtp_tls_security_level = secure\n\
             smtp_tls_CAfile = {ca}\n\
             smtp_tls_loglevel = 1\n\
             smtp_tls_secure_cert_match = nexthop\n\
             smtp_tls_verify_cert_match = hostname, nexthop\n\
             shlib_directory = /usr/lib/postfix\n",
            d = d.display(),
            ca = stack.ca_file.display(),
        );
        let master = format!("127.0.0.1:{port} inet n - n - - smtpd\n{POSTFIX_SERVICES}");
        fs::write(d.join("conf/main.cf"), main).expect("main.cf");
        fs::write(d.join("conf/master.cf"), master).expect("master.cf");
        Command::new("chown")
            .arg("postfix")
            .arg(d.join("data"))
            .status()
            .expect("chown");
        let status = Command::new("/usr/sbin/postfix")
            .arg("-c")
            .arg(d.join("conf"))
            .arg("start")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("postfix");
        let postfix = ClientPostfix { dir, port };
        assert!(status.success(), "client postfix: {}", postfix.log());
        wait_for_port(port, || postfix.log());
        postfix
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("maillog")).unwrap_or_default()
    }
}

impl Drop for ClientPostfix {
    fn drop(&mut self) {
        let _ = Command::new("/usr/sbin/postfix")
            .arg("-c")
            .arg(self.dir.path().join("conf"))
            .arg("stop")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

const SMTPLIB_TO: &str = r#"
import smtplib, sys
port, user, rcpt, subject = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
s = smtplib.SMTP('127.0.0.1', port, timeout=20)
s.sendmail(user, [rcpt], 'From: %s\r\nTo: %s\r\nSubject: %s\r\n\r\nthrough two MTAs\r\n' % (user, rcpt, subject))
s.quit()
"#;

/// Postfix configured with `relayhost` = the relay (SASL PLAIN, TLS verified) hands its mail
/// over; the relay runs inside `mailpilot daemon` because [relay] is configured.
#[test]
fn postfix_relayhost_with_sasl_plain() {
    let stack = MailStack::get();
    let setup = Setup::new(stack, "rlpostfix", "");
    let relay = setup.start(stack, &["daemon"]);
    let postfix = ClientPostfix::start(stack, setup.port);
    let out = Command::new("python3")
        .args(["-c", SMTPLIB_TO, &postfix.port.to_string()])
        .args([&setup.user, &setup.rcpt, "chained through postfix"])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while stack.delivered(&setup.rcpt).is_empty() {
        assert!(
            Instant::now() < deadline,
            "not delivered\nclient postfix:\n{}\nrelay:\n{}",
            postfix.log(),
            relay.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let delivered = stack.delivered(&setup.rcpt);
    assert_eq!(subjects(&delivered), ["chained through postfix"]);
    let log = postfix.log();
    assert!(
        log.contains("relay=127.0.0.1[127.0.0.1]") && log.contains("status=sent"),
        "{log}"
    );
    assert!(
        log.contains("Verified TLS connection") || log.contains("Trusted TLS connection"),
        "{log}"
    );
    let relay_log = relay.stop();
    assert!(relay_log.contains("from user \"app\""), "{relay_log}");
}

const REFUSALS: &str = r#"
import smtplib, ssl, sys, base64
port, ca, user, rcpt = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
ctx = ssl.create_default_context(cafile=ca)
def connect():
    s = smtplib.SMTP('127.0.0.1', port, timeout=20)
    s.starttls(context=ctx)
    s.ehlo()
    return s
def plain(password):
    return 'PLAIN ' + base64.b64encode(b'\0app\0' + password.encode()).decode()
def show(what, reply):
    print(what, reply[0], reply[1].decode(errors='replace'))
s = connect()
show('no-auth MAIL:', s.docmd('MAIL FROM:<%s>' % user))
show('no-auth RCPT:', s.docmd('RCPT TO:<%s>' % rcpt))
s.close()
s = connect()
for i in range(5):
    show('wrong password:', s.docmd('AUTH', plain('wrong-%d' % i)))
show('right password while throttled:', s.docmd('AUTH', plain('s3cret-pass')))
s.close()
"#;

const REFUSALS_AUTHED: &str = r#"
import smtplib, ssl, sys
port, ca, user, rcpt = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
ctx = ssl.create_default_context(cafile=ca)
def show(what, reply):
    print(what, reply[0], reply[1].decode(errors='replace'))
s = smtplib.SMTP('127.0.0.1', port, timeout=20)
s.starttls(context=ctx)
s.ehlo()
print('size advertised:', s.esmtp_features.get('size', '').strip())
s.login('app', 's3cret-pass')
show('SIZE over:', s.docmd('MAIL FROM:<%s> SIZE=9000' % user))
show('MAIL outside allowed_from:', s.docmd('MAIL FROM:<ceo@elsewhere.test>'))
show('MAIL:', s.docmd('MAIL FROM:<%s>' % user))
for r in ['a', 'b', 'c']:
    show('RCPT %s:' % r, s.docmd('RCPT TO:<%s-%s>' % (r, rcpt)))
show('RSET:', s.docmd('RSET'))
show('MAIL:', s.docmd('MAIL FROM:<%s>' % user))
show('RCPT:', s.docmd('RCPT TO:<%s>' % rcpt))
show('DATA:', s.docmd('DATA'))
s.send(b'From: ' + user.encode() + b'\r\nSubject: too big\r\n\r\n' + b'x' * 9000 + b'\r\n.\r\n')
show('too big:', s.getreply())
show('MAIL:', s.docmd('MAIL FROM:<x@lab.mailpilot.test>'))
show('RCPT:', s.docmd('RCPT TO:<%s>' % rcpt))
show('DATA:', s.docmd('DATA'))
s.send(b'From: CEO <ceo@elsewhere.test>\r\nSubject: spoofed\r\n\r\nhi\r\n.\r\n')
show('From outside allowed_from:', s.getreply())
s.send(b'X' * 10000 + b'\r\n')
show('long line:', s.getreply())
show('still there:', s.docmd('NOOP'))
show('MAIL:', s.docmd('MAIL FROM:<%s>' % user))
show('RCPT:', s.docmd('RCPT TO:<%s>' % rcpt))
show('DATA:', s.docmd('DATA'))
s.send(b'From: Lab <x@lab.mailpilot.test>\r\nSubject: the only one\r\n\r\n..dot-stuffed\r\n.\r\n')
show('allowed:', s.getreply())
s.quit()
"#;

/// Each refusal has its code and sends nothing: relaying without AUTH (530), wrong passwords
/// (535, then 454 for the address even with the right one, logged without the password), SIZE
/// (552 at MAIL and after DATA), too many recipients (452), From outside allowed_from (553 at
/// MAIL, 550 after DATA), a line too long (500); only the one allowed message arrives.
#[test]
fn refusals_send_nothing() {
    let stack = MailStack::get();
    let setup = Setup::new(
        stack,
        "rlrefuse",
        "max_message_size = 8192\nmax_recipients = 2",
    );
    let relay = setup.start(stack, &["relay"]);
    let out = setup.python(stack, REFUSALS);
    assert!(out.contains("no-auth MAIL: 530 5.7.0"), "{out}");
    assert!(out.contains("no-auth RCPT: 503"), "{out}");
    assert_eq!(out.matches("wrong password: 535 5.7.8").count(), 5, "{out}");
    assert!(
        out.contains("right password while throttled: 454 4.7.0"),
        "{out}"
    );
    let log = relay.log();
    assert!(
        log.contains("failed login as \"app\" from 127.0.0.1 (5 of 5"),
        "{log}"
    );
    assert!(
        log.contains("login from 127.0.0.1 refused unchecked"),
        "{log}"
    );
    assert!(!log.contains("wrong-") && !log.contains(PASSWORD), "{log}");
    relay.stop();

    // A fresh relay (the throttle is per process and address).
    let relay = setup.start(stack, &["relay"]);
    let out = setup.python(stack, REFUSALS_AUTHED);
    for expected in [
        "size advertised: 8192",
        "SIZE over: 552 5.3.4",
        "MAIL outside allowed_from: 553 5.7.1 Sender <ceo@elsewhere.test> is not allowed for user app",
        "RCPT a: 250",
        "RCPT b: 250",
        "RCPT c: 452 4.5.3",
        "too big: 552 5.3.4",
        "From outside allowed_from: 550 5.7.1 Sender <ceo@elsewhere.test>",
        "long line: 500 5.5.6",
        "still there: 250",
        "allowed: 250 2.0.0 Ok: queued as",
    ] {
        assert!(out.contains(expected), "{expected:?} missing:\n{out}");
    }
    let delivered = stack.wait_delivered(&setup.rcpt, 1);
    std::thread::sleep(Duration::from_millis(500));
    let delivered_after = stack.delivered(&setup.rcpt);
    assert_eq!(subjects(&delivered_after), ["the only one"]);
    assert!(String::from_utf8_lossy(&delivered[0]).contains("\n.dot-stuffed"));
    for r in ["a", "b", "c"] {
        assert!(stack.delivered(&format!("{r}-{}", setup.rcpt)).is_empty());
    }
    let log = relay.stop();
    assert!(log.contains("refused a message from user \"app\""), "{log}");
    let queue = setup.env.run_full(&["queue", "list"], &[], None);
    assert!(
        queue.stderr.contains("the outbox is empty"),
        "{}",
        queue.stderr
    );
}

/// Loopback clients may send without AUTH only when allowed, through the configured account and
/// only with its From; the relay refuses to start without [relay], pointing at `relay passwd`.
#[test]
fn loopback_without_auth_and_no_relay_table() {
    let stack = MailStack::get();
    let (env, _, _) = TestEnv::for_sendmail(stack, "rlnorelay", stack.ports.postfix_submission);
    let run = env.run_full(&["relay"], &[], None);
    run.expect_code(2);
    assert!(run.stderr.contains("relay passwd NAME"), "{}", run.stderr);

    let (env, user, rcpt) = TestEnv::for_sendmail(stack, "rlanon", stack.ports.postfix_submission);
    let port = free_port();
    let mut text = fs::read_to_string(env.config_path()).expect("config");
    text.push_str(&format!(
        "\n[relay]\nlisten = [\"127.0.0.1:{port}\"]\nallow_loopback_without_auth = true\naccount = \"work\"\n"
    ));
    env.write_config(&text);
    let setup = Setup {
        env,
        user,
        rcpt,
        port,
    };
    let relay = setup.start(stack, &["relay"]);
    let out = setup.python(
        stack,
        r#"
import smtplib, sys
port, ca, user, rcpt = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
s = smtplib.SMTP('127.0.0.1', port, timeout=20)
s.ehlo()
print('auth offered:', 'auth' in s.esmtp_features)
print('other sender:', s.docmd('MAIL FROM:<someone@elsewhere.test>')[0])
s.sendmail(user, [rcpt], 'Subject: no auth on loopback\r\n\r\nfrom a local app\r\n')
s.quit()
"#,
    );
    assert!(out.contains("auth offered: False"), "{out}");
    assert!(out.contains("other sender: 553"), "{out}");
    let delivered = stack.wait_delivered(&setup.rcpt, 1);
    let text = String::from_utf8_lossy(&delivered[0]).into_owned();
    assert!(text.contains(&format!("From: {}", setup.user)), "{text}");
    assert!(
        text.contains(".relay@mailpilot.test>"),
        "the relay's Message-ID: {text}"
    );
    let log = relay.stop();
    assert!(
        log.contains("from an unauthenticated loopback client"),
        "{log}"
    );
}

const FOUR_CLIENTS: &str = r#"
import json, smtplib, ssl, sys, threading, time
port, ca, user, rcpt = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
per_client = int(sys.argv[5])
ctx = ssl.create_default_context(cafile=ca)
results = {}
def client(c):
    s = None
    for i in range(per_client):
        subject = 'k9-%d-%03d' % (c, i)
        attempts = 0
        deadline = time.time() + 60
        while True:
            attempts += 1
            try:
                if s is None:
                    s = smtplib.SMTP('127.0.0.1', port, timeout=10)
                    s.starttls(context=ctx)
                    s.login('app', 's3cret-pass')
                s.sendmail(user, [rcpt], 'From: %s\r\nSubject: %s\r\n\r\nmessage %s\r\n' % (user, subject, subject))
                break
            except Exception as e:
                try:
                    s.close()
                except Exception:
                    pass
                s = None
                if time.time() > deadline:
                    raise
                time.sleep(0.05)
        results[subject] = attempts
    if s is not None:
        s.quit()
threads = [threading.Thread(target=client, args=(c,)) for c in range(4)]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps(results))
"#;

/// `kill -9` of the relay while 4 clients stream messages, then a restart: none is missing; a
/// message a client got 250 for on its first try arrives once — or, for the one message the
/// outbox was handing to the server at the kill, twice with the same Message-ID; a message whose
/// 250 was lost in the crash was sent again by its client (at most one extra copy).
#[test]
fn kill_9_with_four_clients() {
    let stack = MailStack::get();
    let setup = Setup::new(stack, "rlkill", "");
    let relay = setup.start(stack, &["relay"]);
    let per_client = 25;
    let clients = Command::new("python3")
        .arg("-c")
        .arg(FOUR_CLIENTS)
        .arg(setup.port.to_string())
        .arg(&stack.ca_file)
        .args([&setup.user, &setup.rcpt])
        .arg(per_client.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    relay.wait_log("relay: queued", 20);
    relay.kill9();
    std::thread::sleep(Duration::from_millis(300));
    let relay = setup.start(stack, &["relay"]);
    let out = clients.wait_with_output().expect("wait for the clients");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let attempts: BTreeMap<String, u32> =
        serde_json::from_slice(&out.stdout).expect("the clients' JSON");
    assert_eq!(attempts.len(), 4 * per_client);
    let retried = attempts.values().filter(|a| **a > 1).count();
    assert!(retried >= 1, "the kill interrupted no client: {attempts:?}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut counts: BTreeMap<String, usize>;
    loop {
        counts = BTreeMap::new();
        for s in subjects(&stack.delivered(&setup.rcpt)) {
            *counts.entry(s).or_default() += 1;
        }
        if attempts.keys().all(|k| counts.contains_key(k)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "missing: {:?}\n{}",
            attempts
                .keys()
                .filter(|k| !counts.contains_key(*k))
                .collect::<Vec<_>>(),
            relay.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Late duplicates would arrive within the drain's next rounds.
    std::thread::sleep(Duration::from_millis(1000));
    let copies = message_ids(&stack.delivered(&setup.rcpt));
    let mut resent_upstream = 0;
    let mut client_duplicates = 0;
    for (subject, tries) in &attempts {
        let ids = &copies[subject];
        let same_message = ids.iter().all(|id| *id == ids[0]);
        match (*tries, ids.len()) {
            (_, 1) => {}
            // The one message being handed to the server when the relay died: it got the
            // server's 250, its outbox file was not removed yet, so it goes again — the same
            // message, same Message-ID (providers collapse it).
            (1, 2) if same_message => resent_upstream += 1,
            // A 250 lost in the crash: the client sent it again, a new copy.
            (t, 2) if t > 1 => client_duplicates += 1,
            (t, n) => panic!("{subject}: {n} copies after {t} client tries: {ids:?}"),
        }
    }
    assert!(
        resent_upstream <= 1,
        "{resent_upstream} messages sent twice by the outbox"
    );
    assert!(client_duplicates <= retried);
    eprintln!(
        "kill -9: {retried} messages retried by their clients ({client_duplicates} of them twice in the mailbox), {resent_upstream} resent by the outbox with the same Message-ID"
    );
    relay.stop();
}

/// Subject → the Message-IDs of its copies.
fn message_ids(messages: &[Vec<u8>]) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for m in messages {
        let parsed = MessageParser::default().parse(m).expect("a message");
        out.entry(parsed.subject().unwrap_or_default().to_string())
            .or_default()
            .push(parsed.message_id().unwrap_or_default().to_string());
    }
    out
}

/// `config check` refuses a listener off loopback without TLS, and shows the relay's users
/// without their hashes.
#[test]
fn config_check_relay_rules() {
    let stack = MailStack::get();
    let setup = Setup::new(stack, "rlconfig", "");
    let run = setup.env.run_full(&["config", "check"], &[], None);
    run.expect_code(0);
    assert!(
        run.stdout.contains(&format!(
            "relay: listen 127.0.0.1:{} (STARTTLS)",
            setup.port
        )),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("user app → account work, From"),
        "{}",
        run.stdout
    );
    assert!(!run.stdout.contains("argon2"), "{}", run.stdout);
    let text = fs::read_to_string(setup.env.config_path()).expect("config");
    let open: String = text
        .lines()
        .filter(|l| !l.starts_with("tls_"))
        .map(|l| format!("{l}\n"))
        .collect::<String>()
        .replace(&format!("127.0.0.1:{}", setup.port), "0.0.0.0:2525");
    setup.env.write_config(&open);
    let run = setup.env.run_full(&["config", "check"], &[], None);
    run.expect_code(2);
    assert!(
        run.stderr
            .contains("relay.listen: 0.0.0.0:2525 is not a loopback address"),
        "{}",
        run.stderr
    );
}
