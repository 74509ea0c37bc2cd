//! A loopback SMTP server that accepts every message and keeps none (it counts them): the far end
//! for measuring mailpilot alone. It offers PIPELINING and 8BITMIME and says yes to any AUTH.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The running sink.
pub struct Sink {
    port: u16,
    count: Arc<AtomicUsize>,
}

impl Sink {
    /// Listens on 127.0.0.1 (a free port), one thread per connection.
    pub fn start() -> Sink {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind sink");
        let port = listener.local_addr().expect("addr").port();
        let count = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&count);
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let counter = Arc::clone(&counter);
                std::thread::spawn(move || serve(conn, &counter));
            }
        });
        Sink { port, count }
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Messages accepted so far.
    pub fn messages(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }
}

fn serve(conn: TcpStream, count: &AtomicUsize) {
    let _ = conn.set_nodelay(true);
    let mut out = conn.try_clone().expect("clone");
    let mut lines = BufReader::with_capacity(64 * 1024, conn);
    let _ = out.write_all(b"220 sink ESMTP\r\n");
    let mut line = Vec::new();
    let mut pending = Vec::new();
    loop {
        line.clear();
        match lines.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let verb = String::from_utf8_lossy(&line[..line.len().min(4)]).to_ascii_uppercase();
        let reply: &[u8] = match verb.as_str() {
            "EHLO" => {
                b"250-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 AUTH XOAUTH2 OAUTHBEARER\r\n"
            }
            "AUTH" => b"235 2.7.0 ok\r\n",
            "DATA" => {
                pending.extend_from_slice(b"354 go on\r\n");
                let _ = out.write_all(&pending);
                pending.clear();
                loop {
                    line.clear();
                    match lines.read_until(b'\n', &mut line) {
                        Ok(0) | Err(_) => return,
                        Ok(_) if line == b".\r\n" => break,
                        Ok(_) => {}
                    }
                }
                count.fetch_add(1, Ordering::SeqCst);
                b"250 2.0.0 kept nothing\r\n"
            }
            "QUIT" => {
                let _ = out.write_all(b"221 bye\r\n");
                return;
            }
            _ => b"250 ok\r\n",
        };
        pending.extend_from_slice(reply);
        // Pipelined commands are answered together, as a real server does.
        if lines.buffer().is_empty() {
            let _ = out.write_all(&pending);
            pending.clear();
        }
    }
}
