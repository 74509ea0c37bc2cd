//! A TCP proxy on 127.0.0.1:0 that forwards to a real server and cuts its first connection after
//! the client has sent a given number of bytes: a server that drops the connection mid-batch.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;

/// The running proxy (its threads end with the test process).
pub struct DroppingProxy {
    /// The port to connect to.
    pub port: u16,
    connections: Arc<AtomicUsize>,
}

impl DroppingProxy {
    /// Forwards to `127.0.0.1:target`; the first connection is cut once the client has sent
    /// `cut_after` bytes.
    pub fn start(target: u16, cut_after: usize) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let connections = Arc::new(AtomicUsize::new(0));
        let count = connections.clone();
        thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let n = count.fetch_add(1, Ordering::SeqCst);
                let limit = if n == 0 { Some(cut_after) } else { None };
                thread::spawn(move || {
                    pipe(client, SocketAddr::from(([127, 0, 0, 1], target)), limit)
                });
            }
        });
        Self { port, connections }
    }

    /// Forwards to `127.0.0.1:target`; the first connection is cut `after` it was accepted (a
    /// server dropping an idle client, a NAT timeout).
    pub fn start_timed(target: u16, after: std::time::Duration) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let connections = Arc::new(AtomicUsize::new(0));
        let count = connections.clone();
        thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let n = count.fetch_add(1, Ordering::SeqCst);
                if n == 0 {
                    let victim = client.try_clone().expect("clone");
                    thread::spawn(move || {
                        thread::sleep(after);
                        let _ = victim.shutdown(Shutdown::Both);
                    });
                }
                thread::spawn(move || {
                    pipe(client, SocketAddr::from(([127, 0, 0, 1], target)), None)
                });
            }
        });
        Self { port, connections }
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

fn pipe(client: TcpStream, target: SocketAddr, limit: Option<usize>) {
    let Ok(server) = TcpStream::connect(target) else {
        return;
    };
    let (mut c_read, mut s_write) = (
        client.try_clone().expect("clone"),
        server.try_clone().expect("clone"),
    );
    let (mut s_read, mut c_write) = (server, client);
    let down = thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        while let Ok(n) = s_read.read(&mut buf) {
            if n == 0 || c_write.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = c_write.shutdown(Shutdown::Both);
    });
    let mut sent = 0usize;
    let mut buf = [0u8; 16 * 1024];
    while let Ok(n) = c_read.read(&mut buf) {
        if n == 0 {
            break;
        }
        let n = match limit {
            Some(l) if sent + n >= l => {
                let _ = s_write.write_all(&buf[..l.saturating_sub(sent)]);
                let _ = c_read.shutdown(Shutdown::Both);
                let _ = s_write.shutdown(Shutdown::Both);
                break;
            }
            _ => n,
        };
        sent += n;
        if s_write.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = s_write.shutdown(Shutdown::Write);
    let _ = down.join();
}
