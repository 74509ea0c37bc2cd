//! Real mail servers for the tests, started once per test run on free loopback ports in a temp
//! directory: Dovecot (IMAP, submission, LMTP) authenticating XOAUTH2/OAUTHBEARER against the test
//! OAuth2 server's introspection endpoint, and Postfix (submission with STARTTLS and with implicit
//! TLS) authenticating through Dovecot's auth socket and delivering into Dovecot over LMTP.
//!
//! Each test uses its own mailbox (see [`MailStack::user`]), so tests stay independent while
//! sharing the servers. A watchdog shell process stops both servers when the test process exits.

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::OAuthServer;

const INSTALL_HINT: &str = "install the test servers with `sudo scripts/install-test-deps.sh` (Debian packages dovecot-core dovecot-imapd dovecot-lmtpd dovecot-submissiond postfix openssl)";

/// Postfix refuses recipients in this domain with `550 5.1.1`.
pub const REJECT_DOMAIN: &str = "reject.mailpilot.test";
/// Postfix refuses recipients in this domain with `450 4.2.1`.
pub const DEFER_DOMAIN: &str = "defer.mailpilot.test";

/// Loopback ports of the running servers.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    /// Dovecot IMAP (STARTTLS).
    pub imap: u16,
    /// Dovecot IMAPS (implicit TLS).
    pub imaps: u16,
    /// Dovecot submission (STARTTLS).
    pub dovecot_submission: u16,
    /// Dovecot submissions (implicit TLS).
    pub dovecot_submissions: u16,
    /// Postfix submission (STARTTLS required).
    pub postfix_submission: u16,
    /// Postfix submissions (implicit TLS).
    pub postfix_submissions: u16,
    /// Dovecot LMTP.
    lmtp: u16,
    /// Postfix plain relay port for Dovecot's submission service (no AUTH; loopback may relay),
    /// also the benchmarks' target for `smtp-source`.
    pub relay: u16,
}

/// The services of a Postfix `master.cf` besides its listeners (the test stack's, and the relay
/// tests' second Postfix that relays through mailpilot).
pub const POSTFIX_SERVICES: &str = "pickup unix n - n 60 1 pickup\n\
cleanup unix n - n - 0 cleanup\n\
qmgr unix n - n 300 1 qmgr\n\
tlsmgr unix - - n 1000? 1 tlsmgr\n\
rewrite unix - - n - - trivial-rewrite\n\
bounce unix - - n - 0 bounce\n\
defer unix - - n - 0 bounce\n\
trace unix - - n - 0 bounce\n\
verify unix - - n - 1 verify\n\
flush unix n - n 1000? 0 flush\n\
proxymap unix - - n - - proxymap\n\
proxywrite unix - - n - 1 proxymap\n\
smtp unix - - n - - smtp\n\
relay unix - - n - - smtp\n\
showq unix n - n - - showq\n\
error unix - - n - - error\n\
retry unix - - n - - error\n\
discard unix - - n - - discard\n\
lmtp unix - - n - - lmtp\n\
anvil unix - - n - 1 anvil\n\
scache unix - - n - 1 scache\n\
postlog unix-dgram n - n - 1 postlogd\n";

/// The running stack.
pub struct MailStack {
    root: PathBuf,
    /// The OAuth2 server the mail servers validate tokens against.
    pub oauth: OAuthServer,
    /// Ports.
    pub ports: Ports,
    /// The CA that signed the servers' certificate.
    pub ca_file: PathBuf,
    /// A CA that did not sign it.
    pub wrong_ca_file: PathBuf,
}

static STACK: OnceLock<MailStack> = OnceLock::new();

/// Waits up to 20 s until something accepts connections on loopback `port`; panics with `logs()`.
pub fn wait_for_port(port: u16, logs: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            panic!("nothing listens on port {port}:\n{}", logs());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs the shell commands `cleanup` once this test process has exited (servers the suite started
/// must not outlive it).
#[allow(
    clippy::zombie_processes,
    reason = "the watchdog must outlive the test process"
)]
pub fn watchdog(cleanup: &str) {
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; {cleanup}",
        pid = std::process::id()
    );
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start watchdog");
}

/// A loopback port that was free a moment ago (nothing listens on it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e}; {INSTALL_HINT}"));
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs a server's start command, whose daemon children inherit stdout/stderr: these go to `log`
/// (a pipe would never reach end-of-file), and only the exit status is awaited.
fn start_daemon(cmd: &mut Command, log: &Path, what: &str) {
    let out = fs::File::create(log).expect("create start log");
    let err = out.try_clone().expect("clone log");
    let status = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .status()
        .unwrap_or_else(|e| panic!("{what}: {e}; {INSTALL_HINT}"));
    assert!(
        status.success(),
        "{what} failed: {}",
        fs::read_to_string(log).unwrap_or_default()
    );
}

impl MailStack {
    /// The shared stack, started on first use.
    pub fn get() -> &'static MailStack {
        STACK.get_or_init(MailStack::start)
    }

    /// A mailbox address unique to `test` (and this run).
    pub fn user(&self, test: &str) -> String {
        format!("{test}-{}@mailpilot.test", std::process::id())
    }

    fn start() -> MailStack {
        for bin in ["/usr/sbin/dovecot", "/usr/sbin/postfix", "/usr/bin/openssl"] {
            assert!(Path::new(bin).exists(), "{bin} not found: {INSTALL_HINT}");
        }
        let uid = Command::new("id").arg("-u").output().expect("id -u");
        assert_eq!(String::from_utf8_lossy(&uid.stdout).trim(), "0", "the mail server tests start Dovecot and Postfix, whose masters need root: run the tests as root (CI does)");
        let dir = tempfile::Builder::new()
            .prefix("mailpilot-stack-")
            .tempdir()
            .expect("tempdir");
        let root = dir.keep();
        // Dovecot's and Postfix's unprivileged users must traverse into the tree.
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).expect("chmod root");
        let oauth = OAuthServer::start();
        let ports = Ports {
            imap: free_port(),
            imaps: free_port(),
            dovecot_submission: free_port(),
            dovecot_submissions: free_port(),
            postfix_submission: free_port(),
            postfix_submissions: free_port(),
            lmtp: free_port(),
            relay: free_port(),
        };
        let (ca_file, wrong_ca_file) = make_certs(&root);
        let stack = MailStack {
            root,
            oauth,
            ports,
            ca_file,
            wrong_ca_file,
        };
        stack.start_dovecot();
        stack.start_postfix();
        stack.start_watchdog();
        for port in [
            ports.imaps,
            ports.dovecot_submission,
            ports.postfix_submission,
            ports.postfix_submissions,
        ] {
            stack.wait_for_port(port);
        }
        stack
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    fn start_dovecot(&self) {
        let r = self.root.display();
        let p = self.ports;
        for d in [
            "dovecot/run",
            "dovecot/state",
            "mail",
            "postfix/spool/private",
        ] {
            fs::create_dir_all(self.path(d)).expect("mkdir");
        }
        run(
            Command::new("chown")
                .args(["mail:mail"])
                .arg(self.path("mail")),
            "chown mail",
        );
        fs::write(
            self.path("dovecot/oauth2.conf.ext"),
            format!(
                "introspection_url = {}\nintrospection_mode = post\nusername_attribute = username\nactive_attribute = active\nactive_value = true\ntokeninfo_url =\n",
                self.oauth.introspect_url()
            ),
        )
        .expect("write oauth2.conf.ext");
        let conf = format!(
            r#"instance_name = mailpilot-test-{pid}
base_dir = {r}/dovecot/run
state_dir = {r}/dovecot/state
log_path = {r}/dovecot/dovecot.log
protocols = imap lmtp submission
listen = 127.0.0.1
ssl = required
ssl_cert = <{r}/tls/server.crt
ssl_key = <{r}/tls/server.key
auth_mechanisms = xoauth2 oauthbearer
auth_failure_delay = 0
auth_cache_size = 0
auth_verbose = yes
disable_plaintext_auth = yes
hostname = mail.mailpilot.test
postmaster_address = postmaster@mailpilot.test
mail_location = maildir:{r}/mail/%u/Maildir
first_valid_uid = 8
passdb {{
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = {r}/dovecot/oauth2.conf.ext
}}
userdb {{
  driver = static
  args = uid=mail gid=mail home={r}/mail/%u allow_all_users=yes
}}
submission_relay_host = 127.0.0.1
submission_relay_port = {relay}
service imap-login {{
  inet_listener imap {{
    port = {imap}
  }}
  inet_listener imaps {{
    port = {imaps}
    ssl = yes
  }}
}}
service submission-login {{
  inet_listener submission {{
    port = {sub}
  }}
  inet_listener submissions {{
    port = {subs}
    ssl = yes
  }}
}}
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {lmtp}
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    port = 0
  }}
}}
service auth {{
  unix_listener {r}/postfix/spool/private/auth {{
    mode = 0660
    user = postfix
    group = postfix
  }}
}}
# No growing delays after failed logins from 127.0.0.1: tests fail logins on purpose.
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
"#,
            pid = std::process::id(),
            relay = p.relay,
            imap = p.imap,
            imaps = p.imaps,
            sub = p.dovecot_submission,
            subs = p.dovecot_submissions,
            lmtp = p.lmtp,
        );
        fs::write(self.path("dovecot/dovecot.conf"), conf).expect("write dovecot.conf");
        start_daemon(
            Command::new("/usr/sbin/dovecot")
                .arg("-c")
                .arg(self.path("dovecot/dovecot.conf")),
            &self.path("dovecot/start.log"),
            "start dovecot",
        );
    }

    fn start_postfix(&self) {
        let r = self.root.display();
        let p = self.ports;
        for d in ["postfix/conf", "postfix/data"] {
            fs::create_dir_all(self.path(d)).expect("mkdir");
        }
        let main = format!(
            r#"compatibility_level = 3.6
queue_directory = {r}/postfix/spool
data_directory = {r}/postfix/data
mail_owner = postfix
setgid_group = postdrop
maillog_file = {r}/postfix/maillog
maillog_file_prefixes = {r}
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = mx.mailpilot.test
mydomain = mailpilot.test
myorigin = mailpilot.test
mydestination =
mynetworks = 127.0.0.0/8
alias_maps =
alias_database =
biff = no
# A delivery Dovecot defers under load is retried within seconds, not the default 5 minutes.
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 4s
smtputf8_enable = no
line_length_limit = 16384
smtpd_peername_lookup = no
smtp_host_lookup = native
lmtp_host_lookup = native
default_transport = lmtp:inet:127.0.0.1:{lmtp}
relay_transport = lmtp:inet:127.0.0.1:{lmtp}
local_transport = lmtp:inet:127.0.0.1:{lmtp}
smtpd_relay_restrictions = permit_mynetworks, permit_sasl_authenticated, reject
# Recipients that fail on purpose: {reject_domain} permanently, {defer_domain} temporarily.
smtpd_recipient_restrictions = check_recipient_access inline:{{ {{{reject_domain}=550 5.1.1 no such mailbox here}}, {{{defer_domain}=450 4.2.1 mailbox busy, try later}} }}
smtpd_tls_cert_file = {r}/tls/server.crt
smtpd_tls_key_file = {r}/tls/server.key
smtpd_tls_security_level = may
smtpd_sasl_type = dovecot
smtpd_sasl_path = private/auth
smtpd_sasl_auth_enable = no
shlib_directory = /usr/lib/postfix
"#,
            lmtp = p.lmtp,
            reject_domain = REJECT_DOMAIN,
            defer_domain = DEFER_DOMAIN,
        );
        let auth = "-o smtpd_sasl_auth_enable=yes -o smtpd_relay_restrictions=permit_sasl_authenticated,reject";
        let master = format!(
            "127.0.0.1:{relay} inet n - n - - smtpd\n\
             127.0.0.1:{sub} inet n - n - - smtpd -o smtpd_tls_security_level=encrypt {auth}\n\
             127.0.0.1:{subs} inet n - n - - smtpd -o smtpd_tls_wrappermode=yes {auth}\n\
             {services}",
            relay = p.relay,
            sub = p.postfix_submission,
            subs = p.postfix_submissions,
            services = POSTFIX_SERVICES,
        );
        fs::write(self.path("postfix/conf/main.cf"), main).expect("main.cf");
        fs::write(self.path("postfix/conf/master.cf"), master).expect("master.cf");
        run(
            Command::new("chown")
                .arg("postfix")
                .arg(self.path("postfix/data"))
                .arg(self.path("postfix/spool/private")),
            "chown postfix dirs",
        );
        let status = Command::new("/usr/sbin/postfix")
            .arg("-c")
            .arg(self.path("postfix/conf"))
            .arg("start")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap_or_else(|e| panic!("postfix: {e}; {INSTALL_HINT}"));
        assert!(
            status.success(),
            "postfix failed to start:\n{}",
            self.postfix_log()
        );
    }

    /// Stops both servers and removes the directory once the test process is gone.
    fn start_watchdog(&self) {
        watchdog(&format!(
            "/usr/sbin/postfix -c '{r}/postfix/conf' stop >/dev/null 2>&1; \
             /usr/bin/doveadm -c '{r}/dovecot/dovecot.conf' stop >/dev/null 2>&1; \
             sleep 1; rm -rf '{r}'",
            r = self.root.display()
        ));
    }

    fn wait_for_port(&self, port: u16) {
        wait_for_port(port, || self.logs());
    }

    /// Both servers' logs, for failure messages.
    pub fn logs(&self) -> String {
        let read = |p: &str| fs::read_to_string(self.path(p)).unwrap_or_default();
        format!(
            "--- dovecot.log\n{}\n--- postfix maillog\n{}",
            read("dovecot/dovecot.log"),
            read("postfix/maillog")
        )
    }

    /// Postfix's log.
    pub fn postfix_log(&self) -> String {
        fs::read_to_string(self.path("postfix/maillog")).unwrap_or_default()
    }

    /// Runs `doveadm` against the test Dovecot; returns stdout.
    pub fn doveadm(&self, args: &[&str], stdin: Option<&[u8]>) -> String {
        use std::io::Write;
        let mut child = Command::new("/usr/bin/doveadm")
            .arg("-c")
            .arg(self.path("dovecot/dovecot.conf"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("doveadm: {e}; {INSTALL_HINT}"));
        let mut input = child.stdin.take().expect("stdin");
        if let Some(bytes) = stdin {
            input.write_all(bytes).expect("write doveadm stdin");
        }
        drop(input);
        let out = child.wait_with_output().expect("doveadm");
        assert!(
            out.status.success(),
            "doveadm {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Saves `message` (raw RFC 5322, crafted by a test) into `mailbox` of `user`.
    pub fn deliver_raw(&self, user: &str, mailbox: &str, message: &[u8]) {
        self.doveadm(&["save", "-u", user, "-m", mailbox], Some(message));
    }

    /// Stores a message with `subject` into `user`'s `mailbox` (as delivery would).
    pub fn deliver(&self, user: &str, mailbox: &str, subject: &str) {
        let msg = format!(
            "From: Sender <sender@example.com>\r\nTo: {user}\r\nSubject: {subject}\r\nMessage-ID: <{subject}.{}@example.com>\r\nDate: Fri, 27 Nov 2026 08:00:00 +0000\r\n\r\nBody of {subject}\r\n",
            std::process::id()
        );
        self.doveadm(&["save", "-u", user, "-m", mailbox], Some(msg.as_bytes()));
    }

    /// Creates `mailbox` for `user` holding `count` copies of `message` (LF line ends, no line
    /// starting with "From "), imported by Dovecot itself from an mbox file (`doveadm import`):
    /// 50,000 messages in about 30 s, where IMAP APPEND takes minutes, and a mailbox Dovecot
    /// opens as fast as one it filled itself (Maildir files written by hand made every session's
    /// first FETCH rescan the directory: ~1.4 s at 50,000). For benchmarks.
    pub fn seed_mailbox(&self, user: &str, mailbox: &str, count: usize, message: &[u8]) {
        let dir = self
            .root
            .join(format!("seed-{}", mailbox.to_ascii_lowercase()));
        fs::create_dir_all(&dir).expect("seed dir");
        let mut mbox = Vec::with_capacity(count * (message.len() + 64));
        for _ in 0..count {
            mbox.extend_from_slice(b"From seed@example.com Fri Nov 27 08:00:00 2026\n");
            mbox.extend(message.iter().copied().filter(|b| *b != b'\r'));
            mbox.push(b'\n');
        }
        fs::write(dir.join(mailbox), mbox).expect("write mbox");
        run(
            Command::new("chown").args(["-R", "mail:mail"]).arg(&dir),
            "chown the seed mbox",
        );
        let source = format!("mbox:{}", dir.display());
        self.doveadm(
            &["import", "-u", user, &source, "", "mailbox", mailbox],
            None,
        );
        let _ = fs::remove_dir_all(&dir);
    }

    /// Creates `mailbox` for `user`.
    pub fn create_mailbox(&self, user: &str, mailbox: &str) {
        self.doveadm(&["mailbox", "create", "-u", user, mailbox], None);
    }

    /// Deletes `mailbox` of `user` with its messages.
    pub fn delete_mailbox(&self, user: &str, mailbox: &str) {
        self.doveadm(&["mailbox", "delete", "-u", user, "-r", mailbox], None);
    }

    /// (UID, flags) of the messages in `user`'s `mailbox`.
    pub fn flags(&self, user: &str, mailbox: &str) -> Vec<(u32, String)> {
        let out = self.doveadm(
            &[
                "-f",
                "tab",
                "fetch",
                "-u",
                user,
                "uid flags",
                "mailbox",
                mailbox,
            ],
            None,
        );
        out.lines()
            .skip(1)
            .filter_map(|l| {
                let (uid, flags) = l.split_once('\t')?;
                Some((uid.trim().parse().ok()?, flags.trim().to_string()))
            })
            .collect()
    }

    /// Messages delivered to `user` (files in `Maildir/new` and `cur`), oldest first.
    pub fn delivered(&self, user: &str) -> Vec<Vec<u8>> {
        let mut files: Vec<PathBuf> = ["new", "cur"]
            .iter()
            .filter_map(|d| fs::read_dir(self.path(&format!("mail/{user}/Maildir/{d}"))).ok())
            .flat_map(|rd| rd.flatten().map(|e| e.path()))
            .collect();
        files.sort();
        files
            .iter()
            .map(|f| fs::read(f).expect("read message"))
            .collect()
    }

    /// How many messages `user` has (files in the Maildir), without reading them.
    pub fn delivered_count(&self, user: &str) -> usize {
        ["new", "cur"]
            .iter()
            .filter_map(|d| fs::read_dir(self.path(&format!("mail/{user}/Maildir/{d}"))).ok())
            .map(Iterator::count)
            .sum()
    }

    /// Waits until `user` has `n` messages (delivery through Postfix is asynchronous).
    pub fn wait_delivered(&self, user: &str, n: usize) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let msgs = self.delivered(user);
            if msgs.len() >= n {
                return msgs;
            }
            if Instant::now() > deadline {
                panic!(
                    "{user} has {} of {n} messages after 20s\n{}",
                    msgs.len(),
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A CA and a server certificate (SANs localhost and 127.0.0.1) signed by it, plus a second,
/// unrelated CA. EC keys: generated in milliseconds.
fn make_certs(root: &Path) -> (PathBuf, PathBuf) {
    let tls = root.join("tls");
    fs::create_dir_all(&tls).expect("mkdir tls");
    let ossl = |args: &[&str]| {
        run(
            Command::new("/usr/bin/openssl")
                .args(args)
                .current_dir(&tls),
            "openssl",
        )
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    for ca in ["ca", "wrong-ca"] {
        let (key, crt, subj) = (
            format!("{ca}.key"),
            format!("{ca}.crt"),
            format!("/CN=mailpilot test {ca}"),
        );
        let mut args = vec!["req", "-x509"];
        args.extend(ec);
        args.extend(["-keyout", &key, "-out", &crt, "-days", "2", "-subj", &subj]);
        ossl(&args);
    }
    let mut args = vec!["req"];
    args.extend(ec);
    args.extend([
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    ossl(&args);
    fs::write(
        tls.join("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .expect("ext.cnf");
    ossl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    // Dovecot's and Postfix's unprivileged processes read the key through their masters (root).
    (tls.join("ca.crt"), tls.join("wrong-ca.crt"))
}
