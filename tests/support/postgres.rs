//! A real PostgreSQL server for the state-database tests, from Debian's packages: a fresh cluster
//! in a temp directory (initdb), listening on a free loopback port, password logins (SCRAM) for
//! the user `mailpilot`. One is shared by the tests of a run ([`PgServer::shared`]); a test that
//! stops or restarts the server starts its own ([`PgServer::start`]). A watchdog stops the server
//! when the test process exits.

#![allow(
    dead_code,
    reason = "each test binary uses a different part of the support code"
)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::mailstack::{free_port, wait_for_port, watchdog};

const INSTALL_HINT: &str =
    "install PostgreSQL with `sudo scripts/install-test-deps.sh` (Debian package postgresql)";

/// The password of the `mailpilot` database user.
pub const PASSWORD: &str = "pg-test-password-7f3a";

/// A running cluster.
pub struct PgServer {
    /// Its loopback port.
    pub port: u16,
    root: PathBuf,
    bin: PathBuf,
    /// Extra server options (TLS).
    options: String,
}

static SHARED: OnceLock<PgServer> = OnceLock::new();

/// The newest `/usr/lib/postgresql/N/bin`.
fn bin_dir() -> PathBuf {
    let mut versions: Vec<u32> = fs::read_dir("/usr/lib/postgresql")
        .unwrap_or_else(|e| panic!("/usr/lib/postgresql: {e}; {INSTALL_HINT}"))
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    versions.sort_unstable();
    let newest = versions
        .last()
        .unwrap_or_else(|| panic!("no PostgreSQL under /usr/lib/postgresql; {INSTALL_HINT}"));
    PathBuf::from(format!("/usr/lib/postgresql/{newest}/bin"))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

impl PgServer {
    /// The server shared by the tests of this run.
    pub fn shared() -> &'static PgServer {
        SHARED.get_or_init(PgServer::start)
    }

    /// A server of its own (for tests that stop or restart it).
    pub fn start() -> PgServer {
        Self::start_with(None)
    }

    /// A server of its own that accepts TCP logins only over TLS, with this certificate chain and
    /// key (PEM).
    pub fn start_tls(cert: &Path, key: &Path) -> PgServer {
        Self::start_with(Some((cert, key)))
    }

    fn start_with(tls: Option<(&Path, &Path)>) -> PgServer {
        let bin = bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("mailpilot-pg-")
            .tempdir()
            .expect("tempdir");
        let root = dir.keep();
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).expect("chmod");
        let pwfile = root.join("pw");
        fs::write(&pwfile, PASSWORD).expect("pwfile");
        let options = match tls {
            Some((cert, key)) => {
                fs::copy(cert, root.join("server.crt")).expect("copy cert");
                fs::copy(key, root.join("server.key")).expect("copy key");
                fs::set_permissions(root.join("server.key"), fs::Permissions::from_mode(0o600))
                    .expect("chmod key");
                format!(
                    " -c ssl=on -c ssl_cert_file={r}/server.crt -c ssl_key_file={r}/server.key",
                    r = root.display()
                )
            }
            None => String::new(),
        };
        let server = PgServer {
            port: free_port(),
            root,
            bin,
            options,
        };
        if is_root() {
            // initdb and postgres refuse to run as root: the cluster belongs to `postgres`.
            server.run(
                Command::new("chown")
                    .args(["-R", "postgres:postgres"])
                    .arg(&server.root),
            );
        }
        let data = server.root.join("data");
        server.run(
            server
                .command("initdb")
                .arg("-D")
                .arg(&data)
                .args([
                    "-U",
                    "mailpilot",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                ])
                .arg(format!("--pwfile={}", pwfile.display()))
                .args(["-E", "UTF8", "--no-sync"]),
        );
        if tls.is_some() {
            // TCP logins over TLS only: a plain connection finds no pg_hba.conf line.
            fs::write(
                data.join("pg_hba.conf"),
                "local all all trust\nhostssl all all 127.0.0.1/32 scram-sha-256\n",
            )
            .expect("pg_hba.conf");
        }
        server.pg_ctl_start();
        server.start_watchdog();
        server.psql("postgres", "CREATE DATABASE mailpilot");
        server
    }

    /// `program` from the PostgreSQL bin directory, run as `postgres` when we are root.
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        assert!(
            path.exists(),
            "{} not found: {INSTALL_HINT}",
            path.display()
        );
        if is_root() {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "postgres", "--"]).arg(path);
            cmd
        } else {
            Command::new(path)
        }
    }

    fn run(&self, cmd: &mut Command) -> String {
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("{cmd:?}: {e}; {INSTALL_HINT}"));
        assert!(
            out.status.success(),
            "{cmd:?} failed: {}\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn pg_ctl_start(&self) {
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c fsync=off -c max_connections=200{}",
            self.port,
            self.root.display(),
            self.options
        );
        let log = self.root.join("postgres.log");
        self.run(
            self.command("pg_ctl")
                .arg("-D")
                .arg(self.root.join("data"))
                .arg("-l")
                .arg(&log)
                .args(["-o", &options, "-w", "-t", "30", "start"])
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        wait_for_port(self.port, || self.log());
    }

    /// Stops the server at once (as a crash or a failover would), leaving the data.
    pub fn stop(&self) {
        self.run(
            self.command("pg_ctl")
                .arg("-D")
                .arg(self.root.join("data"))
                .args(["-m", "immediate", "-w", "stop"]),
        );
    }

    /// Starts it again after [`Self::stop`].
    pub fn resume(&self) {
        self.pg_ctl_start();
    }

    fn start_watchdog(&self) {
        watchdog(&format!(
            "{runas} '{bin}/pg_ctl' -D '{r}/data' -m immediate stop >/dev/null 2>&1; \
             sleep 1; rm -rf '{r}'",
            runas = if is_root() {
                "runuser -u postgres --"
            } else {
                ""
            },
            bin = self.bin.display(),
            r = self.root.display()
        ));
    }

    /// Waits until the outbox table of `schema` is empty (every message delivered and settled);
    /// panics after `within`.
    pub fn wait_outbox_empty(&self, schema: &str, within: Duration) {
        let deadline = Instant::now() + within;
        let count = format!("SELECT count(*) FROM {schema}.outbox");
        while self.psql("mailpilot", &count).trim() != "0" {
            assert!(
                Instant::now() < deadline,
                "the outbox of {schema} never emptied in {within:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Queues `count` messages numbered from `first` straight into the outbox table of `schema`
    /// (as `sendmail`, the relay or another host would have), for account `work` to `rcpt`.
    pub fn queue_messages(&self, schema: &str, rcpt: &str, first: usize, count: usize) {
        self.psql(
            "mailpilot",
            &format!(
                "INSERT INTO {schema}.outbox (id, status, account, head, message, attempts)
                 SELECT to_char(i, 'FM000000000000000000000000') || '-1-0', 'queued', 'work',
                        jsonb_build_object('version', 1, 'account', 'work', 'from', '',
                                           'to', jsonb_build_array('{rcpt}'),
                                           'queued_at', extract(epoch FROM now())::bigint),
                        convert_to(format(E'From: ops@example.com\\r\\nTo: {rcpt}\\r\\nSubject: m%s\\r\\nMessage-ID: <m%s.{schema}@mailpilot.test>\\r\\n\\r\\nbody %s\\r\\n', i, i, i), 'UTF8'),
                        '{{}}'::jsonb
                 FROM generate_series({first}, {last}) AS i",
                last = first + count - 1
            ),
        );
    }

    /// Runs `sql` in `database` as the `mailpilot` superuser; the output, unaligned.
    pub fn psql(&self, database: &str, sql: &str) -> String {
        let psql = self.bin.join("psql");
        self.run(
            Command::new(psql)
                .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
                .args(["-U", "mailpilot", "-d", database, "-c", sql])
                .env("PGPASSWORD", PASSWORD),
        )
    }

    /// `pg_dump` of the `mailpilot` database, as text.
    pub fn dump(&self) -> String {
        let dump = self.bin.join("pg_dump");
        self.run(
            Command::new(dump)
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
                .args(["-U", "mailpilot", "-d", "mailpilot"])
                .env("PGPASSWORD", PASSWORD),
        )
    }

    /// The `[state]` table for schema `schema`, with the password in `password_file`.
    pub fn state_config(&self, schema: &str, password_file: &Path) -> String {
        fs::write(password_file, PASSWORD).expect("password file");
        fs::set_permissions(password_file, fs::Permissions::from_mode(0o600)).expect("chmod");
        format!(
            "[state]\nbackend = \"postgres\"\nurl = \"postgresql://mailpilot@127.0.0.1:{}/mailpilot\"\npassword_file = \"{}\"\nschema = \"{schema}\"\n",
            self.port,
            password_file.display()
        )
    }

    /// The server log, for failure messages.
    pub fn log(&self) -> String {
        fs::read_to_string(self.root.join("postgres.log")).unwrap_or_default()
    }
}
