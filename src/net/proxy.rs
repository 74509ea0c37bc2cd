//! Tunnels through a proxy to a mail server: HTTP `CONNECT` (RFC 9110 §9.3.6, Basic
//! credentials) and SOCKS5 (RFC 1928, user/password per RFC 1929). What comes back is a plain
//! TCP stream to the server; TLS then runs end to end through it. The proxy's answers are
//! bounded ([`MAX_REPLY`]) and its refusals named.

use std::io;

use base64::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::{Proxy, ProxyKind};
use crate::error::{clean, ServerError, SERVER_TEXT_MAX};

/// The longest `CONNECT` answer head read.
const MAX_REPLY: usize = 8 * 1024;

/// Opens a connection to `host:port` through `proxy` (the caller bounds it in time).
///
/// # Errors
/// [`ServerError::Transient`] when the proxy cannot be reached or cannot reach the server;
/// [`ServerError::Failed`] when it refuses (credentials, rules) or does not speak its protocol.
pub async fn tunnel(proxy: &Proxy, host: &str, port: u16) -> Result<TcpStream, ServerError> {
    let at = format!("proxy {proxy}");
    let mut tcp = TcpStream::connect((proxy.host.as_str(), proxy.port))
        .await
        .map_err(|e| ServerError::transient(&at, "connecting failed").with_source(e))?;
    tcp.set_nodelay(true)
        .map_err(|e| ServerError::transient(&at, "setting TCP_NODELAY failed").with_source(e))?;
    let lost = |e: io::Error| ServerError::transient(&at, "the connection was lost").with_source(e);
    match proxy.kind {
        ProxyKind::Http => connect(&mut tcp, proxy, host, port, &at).await,
        ProxyKind::Socks5 | ProxyKind::Socks5h => socks5(&mut tcp, proxy, host, port, &at).await,
    }
    .map_err(|e| match e {
        Refusal::Io(e) => lost(e),
        Refusal::Server(e) => e,
    })?;
    Ok(tcp)
}

enum Refusal {
    Io(io::Error),
    Server(ServerError),
}

impl From<io::Error> for Refusal {
    fn from(e: io::Error) -> Self {
        Refusal::Io(e)
    }
}

fn authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

async fn connect(
    tcp: &mut TcpStream,
    proxy: &Proxy,
    host: &str,
    port: u16,
    at: &str,
) -> Result<(), Refusal> {
    let target = authority(host, port);
    let mut request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some((user, password)) = &proxy.credentials {
        let basic = base64::engine::general_purpose::STANDARD
            .encode(format!("{user}:{}", password.expose()));
        request.push_str(&format!("Proxy-Authorization: Basic {basic}\r\n"));
    }
    request.push_str("\r\n");
    tcp.write_all(request.as_bytes()).await?;
    // Read byte by byte up to the blank line: nothing of the tunnel may be swallowed.
    let mut head = Vec::with_capacity(256);
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= MAX_REPLY {
            return Err(Refusal::Server(ServerError::failed(
                at,
                format!("the CONNECT answer is longer than {MAX_REPLY} bytes"),
            )));
        }
        let byte = tcp.read_u8().await?;
        head.push(byte);
    }
    let head = String::from_utf8_lossy(&head);
    let status_line = head.lines().next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let said = clean(status_line, SERVER_TEXT_MAX);
    match status {
        200..=299 => Ok(()),
        407 => Err(Refusal::Server(
            ServerError::failed(at, format!("the proxy wants credentials ({said})"))
                .with_hint("give them in the proxy URL: http://USER:PASSWORD@HOST:PORT"),
        )),
        502..=504 => Err(Refusal::Server(ServerError::transient(
            at,
            format!("the proxy could not reach {target} ({said})"),
        ))),
        _ => Err(Refusal::Server(ServerError::failed(
            at,
            format!("the proxy refused the tunnel to {target} ({said})"),
        ))),
    }
}

async fn socks5(
    tcp: &mut TcpStream,
    proxy: &Proxy,
    host: &str,
    port: u16,
    at: &str,
) -> Result<(), Refusal> {
    socks5_login(tcp, proxy, at).await?;
    socks5_open(tcp, proxy, host, port, at).await
}

/// The SOCKS5 greeting, and the user/password login (RFC 1929) when the proxy picks it.
async fn socks5_login(tcp: &mut TcpStream, proxy: &Proxy, at: &str) -> Result<(), Refusal> {
    let refused = |reason: String| Refusal::Server(ServerError::failed(at, reason));
    let method = if proxy.credentials.is_some() { 2 } else { 0 };
    tcp.write_all(&[5, 1, method]).await?;
    let mut choice = [0u8; 2];
    tcp.read_exact(&mut choice).await?;
    if choice[0] != 5 {
        return Err(refused("it does not speak SOCKS5".into()));
    }
    match (choice[1], &proxy.credentials) {
        (0, _) => {}
        (2, Some((user, password))) => {
            let mut auth = vec![1, user.len() as u8];
            auth.extend_from_slice(user.as_bytes());
            auth.push(password.expose().len() as u8);
            auth.extend_from_slice(password.expose().as_bytes());
            tcp.write_all(&auth).await?;
            let mut status = [0u8; 2];
            tcp.read_exact(&mut status).await?;
            if status[1] != 0 {
                return Err(Refusal::Server(
                    ServerError::failed(at, "the proxy refused the user name and password")
                        .with_hint("check the credentials in the proxy URL"),
                ));
            }
        }
        _ => {
            return Err(Refusal::Server(
                ServerError::failed(at, "the proxy accepts none of the offered login methods")
                    .with_hint(if proxy.credentials.is_some() {
                        "the proxy may not need credentials: remove them from the proxy URL"
                    } else {
                        "give credentials in the proxy URL: socks5://USER:PASSWORD@HOST:PORT"
                    }),
            ))
        }
    }
    Ok(())
}

/// The CONNECT request for `host:port` and the proxy's answer.
async fn socks5_open(
    tcp: &mut TcpStream,
    proxy: &Proxy,
    host: &str,
    port: u16,
    at: &str,
) -> Result<(), Refusal> {
    let refused = |reason: String| Refusal::Server(ServerError::failed(at, reason));
    let mut request = vec![5, 1, 0];
    match proxy.kind {
        ProxyKind::Socks5h => domain(&mut request, host).map_err(refused)?,
        _ => {
            let addr = tokio::net::lookup_host((host, port))
                .await?
                .next()
                .ok_or_else(|| {
                    io::Error::new(io::ErrorKind::NotFound, format!("{host} has no address"))
                })?;
            match addr.ip() {
                std::net::IpAddr::V4(ip) => {
                    request.push(1);
                    request.extend_from_slice(&ip.octets());
                }
                std::net::IpAddr::V6(ip) => {
                    request.push(4);
                    request.extend_from_slice(&ip.octets());
                }
            }
        }
    }
    request.extend_from_slice(&port.to_be_bytes());
    tcp.write_all(&request).await?;
    let mut reply = [0u8; 4];
    tcp.read_exact(&mut reply).await?;
    let skip = match reply[3] {
        1 => 4,
        4 => 16,
        3 => usize::from(tcp.read_u8().await?),
        _ => return Err(refused("its answer is not SOCKS5".into())),
    };
    let mut rest = vec![0u8; skip + 2];
    tcp.read_exact(&mut rest).await?;
    let target = authority(host, port);
    let reason = match reply[1] {
        0 => return Ok(()),
        1 => "general failure",
        2 => "not allowed by its rules",
        3 => "network unreachable",
        4 => "host unreachable",
        5 => "connection refused",
        6 => "TTL expired",
        7 => "command not supported",
        8 => "address type not supported",
        _ => "unknown error",
    };
    let text = format!("the proxy could not open {target}: {reason}");
    Err(Refusal::Server(match reply[1] {
        2 | 7 | 8 => ServerError::failed(at, text),
        _ => ServerError::transient(at, text),
    }))
}

/// SOCKS5 address type 3: the host name, for the proxy to resolve.
fn domain(request: &mut Vec<u8>, host: &str) -> Result<(), String> {
    let len = u8::try_from(host.len())
        .map_err(|_| format!("the host name {host} is too long for SOCKS5"))?;
    request.push(3);
    request.push(len);
    request.extend_from_slice(host.as_bytes());
    Ok(())
}
