//! Test harness: a temp HOME/XDG directory per test, the real `mailpilot` binary, and the servers.

#![allow(
    dead_code,
    unused_imports,
    reason = "each test binary uses a different part of the support code"
)]

pub mod fake_imap;
pub mod mailstack;
pub mod oauth_server;
pub mod postgres;
pub mod proxies;
pub mod proxy;

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

pub use mailstack::MailStack;
pub use oauth_server::{Fault, OAuthServer, Policy};

/// The result of one run of the binary.
#[derive(Debug)]
pub struct Run {
    /// Exit status (-1 when killed by a signal).
    pub code: i32,
    /// stdout as text.
    pub stdout: String,
    /// stderr as text.
    pub stderr: String,
}

impl Run {
    fn from(out: Output) -> Self {
        Self {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Panics with both streams unless the exit status is `code`.
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code, code,
            "unexpected exit status\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }
}

/// A private HOME with XDG directories and a config file.
pub struct TestEnv {
    dir: tempfile::TempDir,
}

impl Default for TestEnv {
    fn default() -> Self {
        Self::new()
    }
}

impl TestEnv {
    /// A fresh, empty environment.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        for sub in ["home", "config/mailpilot", "state"] {
            fs::create_dir_all(dir.path().join(sub)).expect("mkdir");
        }
        Self { dir }
    }

    /// A fresh environment with `config` as its config file: another "host" sharing a config.
    pub fn with_config(config: &str) -> Self {
        let env = Self::new();
        env.write_config(config);
        env
    }

    /// A state key file `name` in the root: 32 bytes `byte`, mode 0600.
    pub fn key_file(&self, name: &str, byte: u8) -> PathBuf {
        let path = self.root().join(name);
        fs::write(&path, [byte; 32]).expect("key");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod key");
        path
    }

    /// The root of the temp directory.
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// `$XDG_CONFIG_HOME/mailpilot/config.toml`.
    pub fn config_path(&self) -> PathBuf {
        self.root().join("config/mailpilot/config.toml")
    }

    /// `$XDG_STATE_HOME/mailpilot`.
    pub fn state_dir(&self) -> PathBuf {
        self.root().join("state/mailpilot")
    }

    /// The token file of `account`.
    pub fn token_file(&self, account: &str) -> PathBuf {
        self.state_dir().join(format!("tokens/{account}.json"))
    }

    /// The token file parsed as JSON.
    pub fn token_json(&self, account: &str) -> serde_json::Value {
        let text = fs::read_to_string(self.token_file(account)).expect("token file");
        serde_json::from_str(&text).expect("token file is valid JSON")
    }

    /// Writes the config file with mode 0600.
    pub fn write_config(&self, text: &str) {
        self.write_config_mode(text, 0o600);
    }

    /// Writes the config file with `mode`.
    pub fn write_config_mode(&self, text: &str, mode: u32) {
        let path = self.config_path();
        fs::write(&path, text).expect("write config");
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod config");
    }

    /// A command for the real binary with this environment (and nothing inherited that matters).
    pub fn cmd(&self, args: &[&str]) -> Command {
        self.cmd_via(env!("CARGO_BIN_EXE_mailpilot"), args)
    }

    /// `program args…` with this environment.
    fn cmd_via(&self, program: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.root().join("home"))
            .env("XDG_CONFIG_HOME", self.root().join("config"))
            .env("XDG_STATE_HOME", self.root().join("state"))
            .env("RUST_BACKTRACE", "0")
            .env("RUST_LIB_BACKTRACE", "0")
            .stdin(Stdio::null());
        cmd
    }

    /// Runs the binary to completion with extra environment variables and optional stdin.
    pub fn run_full(&self, args: &[&str], vars: &[(&str, &str)], stdin: Option<&str>) -> Run {
        Self::finish(self.cmd(args), vars, stdin)
    }

    /// Runs `program` (a link to the binary under another name, like `sendmail`) with this
    /// environment, extra variables and optional stdin.
    pub fn run_via(
        &self,
        program: &Path,
        args: &[&str],
        vars: &[(&str, &str)],
        stdin: Option<&str>,
    ) -> Run {
        let program = program.to_str().expect("UTF-8 path");
        Self::finish(self.cmd_via(program, args), vars, stdin)
    }

    fn finish(mut cmd: Command, vars: &[(&str, &str)], stdin: Option<&str>) -> Run {
        cmd.envs(vars.iter().copied());
        let Some(input) = stdin else {
            return Run::from(cmd.output().expect("run mailpilot"));
        };
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn mailpilot");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write stdin");
        Run::from(child.wait_with_output().expect("wait mailpilot"))
    }

    /// Runs the binary to completion under a Python parent that reports the child's peak
    /// resident memory (`getrusage(RUSAGE_CHILDREN)`); returns the run and that peak in KiB.
    pub fn run_measured(&self, args: &[&str], vars: &[(&str, &str)]) -> (Run, u64) {
        const SCRIPT: &str = "import resource, subprocess, sys\n\
r = subprocess.run(sys.argv[1:], stdin=subprocess.DEVNULL, capture_output=True)\n\
sys.stdout.buffer.write(r.stdout)\n\
sys.stderr.buffer.write(r.stderr)\n\
sys.stderr.write('\\nMAXRSS_KIB=%d\\n' % resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n\
sys.exit(r.returncode if r.returncode >= 0 else 128 - r.returncode)\n";
        let mut argv = vec!["-c", SCRIPT, env!("CARGO_BIN_EXE_mailpilot")];
        argv.extend_from_slice(args);
        let mut cmd = self.cmd_via("python3", &argv);
        cmd.envs(vars.iter().copied());
        let mut run = Run::from(
            cmd.output()
                .expect("run python3 (install it with scripts/install-test-deps.sh)"),
        );
        let (stderr, rss) = run
            .stderr
            .rsplit_once("\nMAXRSS_KIB=")
            .map(|(e, r)| (e.to_string(), r.trim().parse::<u64>().unwrap_or(u64::MAX)))
            .expect("the measuring parent reports MAXRSS_KIB");
        run.stderr = stderr;
        (run, rss)
    }

    /// Runs the binary to completion.
    pub fn run(&self, args: &[&str]) -> Run {
        self.run_full(args, &[], None)
    }

    /// Runs the binary with `input` on stdin.
    pub fn run_stdin(&self, args: &[&str], input: &str) -> Run {
        self.run_full(args, &[], Some(input))
    }

    /// Starts the binary without waiting.
    pub fn spawn(&self, args: &[&str]) -> Child {
        self.cmd(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn mailpilot")
    }

    /// Writes a config with one custom account `work` against `server`, plus `extra` lines in the
    /// account table.
    pub fn config_for(&self, server: &OAuthServer, extra: &str) {
        self.write_config(&format!(
            r#"
[accounts.work]
provider = "custom"
email = "ops@example.com"
client_id = "test-client"
client_secret_env = "MP_TEST_SECRET"
token_url = "{}"
{extra}
"#,
            server.token_url()
        ));
    }

    /// `auth import work` with a fresh grant from `server`; returns the refresh token.
    pub fn import(&self, server: &OAuthServer) -> String {
        self.import_for(server, "ops@example.com")
    }

    /// `auth import work` with a fresh grant for `email`; returns the refresh token.
    pub fn import_for(&self, server: &OAuthServer, email: &str) -> String {
        let rt = server.issue_grant(email);
        let secret = server.client_secret();
        self.run_full(
            &["auth", "import", "work"],
            &[("MP_TEST_SECRET", &secret)],
            Some(&rt),
        )
        .expect_code(0);
        rt
    }

    /// Writes a config whose account `work` is `user` on the stack, sending through `port` with
    /// `tls` and `mechanism`, trusting `ca_file`.
    pub fn config_for_stack(
        &self,
        stack: &MailStack,
        user: &str,
        smtp: (u16, &str, &str),
        ca_file: &Path,
    ) {
        let (port, tls, mechanism) = smtp;
        self.write_config(&format!(
            r#"
[accounts.work]
provider = "custom"
email = "{user}"
client_id = "test-client"
client_secret_env = "MP_TEST_SECRET"
token_url = "{token_url}"

[accounts.work.smtp]
host = "127.0.0.1"
port = {port}
tls = "{tls}"
mechanism = "{mechanism}"
ca_file = "{ca}"

[accounts.work.imap]
host = "127.0.0.1"
port = {imaps}
tls = "implicit"
mechanism = "xoauth2"
ca_file = "{ca}"
"#,
            token_url = stack.oauth.token_url(),
            ca = ca_file.display(),
            imaps = stack.ports.imaps,
        ));
    }

    /// A fresh environment whose one account (a new stack user of `test`, with a stored grant)
    /// sends through `port` with STARTTLS and XOAUTH2, and whose `[sendmail]` maps `root` to a new
    /// recipient; returns (env, user, recipient).
    pub fn for_sendmail(stack: &MailStack, test: &str, port: u16) -> (TestEnv, String, String) {
        let (user, rcpt) = (stack.user(test), stack.user(&format!("{test}-rcpt")));
        let env = TestEnv::new();
        env.config_for_stack(stack, &user, (port, "starttls", "xoauth2"), &stack.ca_file);
        let mut text = fs::read_to_string(env.config_path()).expect("config");
        text.push_str(&format!("\n[sendmail.aliases]\nroot = \"{rcpt}\"\n"));
        env.write_config(&text);
        env.import_for(&stack.oauth, &user);
        (env, user, rcpt)
    }

    /// A fresh environment for a new stack user of `test` (config sending via Postfix, reading via
    /// Dovecot IMAPS) whose INBOX exists, as a real account's always does. No grant yet.
    pub fn for_mailbox(stack: &MailStack, test: &str) -> (TestEnv, String) {
        let user = stack.user(test);
        let env = TestEnv::new();
        env.config_for_stack(
            stack,
            &user,
            (stack.ports.postfix_submission, "starttls", "xoauth2"),
            &stack.ca_file,
        );
        stack.doveadm(
            &["mailbox", "status", "-u", &user, "messages", "INBOX"],
            None,
        );
        (env, user)
    }

    /// Runs with the test client secret in the environment.
    pub fn run_with_secret(&self, server: &OAuthServer, args: &[&str]) -> Run {
        self.run_full(args, &[("MP_TEST_SECRET", &server.client_secret())], None)
    }

    /// Imports a fresh grant for account `a{i:02}` of [`numbered_accounts`].
    pub fn import_numbered(&self, server: &OAuthServer, i: usize) {
        let rt = server.issue_grant(&format!("user{i}@example.com"));
        self.run_full(
            &["auth", "import", &format!("a{i:02}")],
            &[("MP_TEST_SECRET", &server.client_secret())],
            Some(&rt),
        )
        .expect_code(0);
    }

    /// Starts the binary (a daemon, a long poll) with `server`'s client secret, without waiting;
    /// stdout and stderr piped.
    pub fn spawn_with_secret(&self, server: &OAuthServer, args: &[&str]) -> Child {
        self.cmd(args)
            .env("MP_TEST_SECRET", server.client_secret())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn mailpilot")
    }
}

/// `state` (a `[state]` table, or nothing) and accounts `a00`… (`user0@example.com`…) against
/// `server`, refreshing only when a token has expired (margin 0): many accounts sharing a state.
pub fn numbered_accounts(server: &OAuthServer, accounts: usize, state: &str) -> String {
    let mut text = state.to_string();
    for i in 0..accounts {
        text.push_str(&format!(
            "\n[accounts.a{i:02}]\nprovider = \"custom\"\nemail = \"user{i}@example.com\"\nclient_id = \"test-client\"\nclient_secret_env = \"MP_TEST_SECRET\"\ntoken_url = \"{}\"\nrefresh_margin = \"0s\"\n",
            server.token_url()
        ));
    }
    text
}

/// SIGTERM to a daemon; it must stop with 0. Returns what it wrote on stderr.
pub fn stop_daemon(daemon: Child) -> String {
    Command::new("kill")
        .args(["-TERM", &daemon.id().to_string()])
        .status()
        .expect("kill");
    let out = daemon.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    stderr
}
