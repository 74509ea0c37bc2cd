//! Real proxies for the network tests, each a child process on a free loopback port, killed when
//! dropped: tinyproxy (HTTP CONNECT and forward proxy), microsocks (SOCKS5) and socat (a TLS
//! front for the test OAuth server, with a certificate from the test CA).

#![allow(
    dead_code,
    reason = "each test binary uses a different part of the support code"
)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::mailstack::{free_port, wait_for_port};

const INSTALL_HINT: &str =
    "install the test tools with `sudo scripts/install-test-deps.sh` (Debian packages tinyproxy microsocks socat)";

/// A child process with its log file.
pub struct Proc {
    /// The port it listens on.
    pub port: u16,
    child: Child,
    log: PathBuf,
}

impl Proc {
    /// What it logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn spawn(program: &str, args: &[&str], port: u16, dir: &Path) -> Self {
        assert!(
            Path::new(program).exists(),
            "{program} not found: {INSTALL_HINT}"
        );
        let log = dir.join(format!("{port}.log"));
        let out = fs::File::create(&log).expect("log file");
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("{program}: {e}; {INSTALL_HINT}"));
        let proc = Proc { port, child, log };
        wait_for_port(port, || proc.log());
        proc
    }

    /// tinyproxy on a free port (no port restriction on CONNECT), with Basic credentials when
    /// given; it logs every connection.
    pub fn tinyproxy(dir: &Path, auth: Option<(&str, &str)>) -> Self {
        let port = free_port();
        let log = dir.join(format!("{port}.log"));
        let auth = auth.map_or(String::new(), |(u, p)| format!("BasicAuth {u} {p}\n"));
        let conf = dir.join(format!("tinyproxy-{port}.conf"));
        fs::write(
            &conf,
            format!(
                "Port {port}\nListen 127.0.0.1\nTimeout 60\nLogFile \"{}\"\nLogLevel Connect\nMaxClients 50\nAllow 127.0.0.1\nDisableViaHeader Yes\n{auth}",
                log.display()
            ),
        )
        .expect("tinyproxy.conf");
        let conf = conf.to_str().expect("utf8").to_string();
        let mut proc = Self::spawn("/usr/bin/tinyproxy", &["-d", "-c", &conf], port, dir);
        // tinyproxy writes its own log file; its stdout/stderr go to a side file.
        proc.log = log;
        proc
    }

    /// microsocks (SOCKS5) on a free port, with user/password when given.
    pub fn microsocks(dir: &Path, auth: Option<(&str, &str)>) -> Self {
        let port = free_port();
        let port_text = port.to_string();
        let mut args = vec!["-i", "127.0.0.1", "-p", &port_text];
        if let Some((u, p)) = auth {
            args.extend_from_slice(&["-u", u, "-P", p]);
        }
        Self::spawn("/usr/bin/microsocks", &args, port, dir)
    }

    /// socat terminating TLS (`cert`/`key`) on a free port and forwarding to 127.0.0.1:`target`.
    pub fn tls_front(dir: &Path, target: u16, cert: &Path, key: &Path) -> Self {
        let port = free_port();
        let listen = format!(
            "OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,cert={},key={},verify=0",
            cert.display(),
            key.display()
        );
        let to = format!("TCP:127.0.0.1:{target}");
        Self::spawn("/usr/bin/socat", &["-d", &listen, &to], port, dir)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
