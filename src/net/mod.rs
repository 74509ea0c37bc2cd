//! TCP and TLS for both protocols: connect with a timeout and `TCP_NODELAY` (directly or through
//! the account's proxy, `proxy`), and TLS with rustls (ring) trusting what [`crate::trust`] says.
//!
//! `TCP_NODELAY` matters: SMTP clients write the message body and the final `.` separately, and
//! with Nagle's algorithm the second write waits for the server's delayed ACK — 40 ms per message.
//! `TCP_QUICKACK` is the same stall the other way round (see `quick_ack`).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::{self, ClientConfig};
use tokio_rustls::TlsConnector;

mod proxy;

use crate::config::Server;
use crate::error::ServerError;

/// Connecting, the TLS handshake and the greeting, each: long enough for a slow network, short
/// enough for cron.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// One command and its reply (RFC 5321 §4.5.3.2 suggests minutes; servers answer in
/// milliseconds).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// The hint for a failed handshake.
pub const TLS_HINT: &str =
    "the server's certificate is not trusted for this host name: check host, or set ca_file to the CA that signed it";

/// A connection, encrypted or (loopback only, by config validation) not.
#[derive(Debug)]
pub enum Stream {
    /// Plain TCP (before STARTTLS, or `tls = "none"` to a loopback host).
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<TlsStream<TcpStream>>),
    /// TLS over TCP, our end the server (the relay).
    ServerTls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// Closed on purpose (or given up after an error): reads end, writes fail.
    Closed,
}

impl Stream {
    /// Whether the connection is encrypted.
    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_) | Stream::ServerTls(_))
    }

    fn tcp(&self) -> io::Result<&TcpStream> {
        match self {
            Stream::Plain(s) => Ok(s),
            Stream::Tls(s) => Ok(s.get_ref().0),
            Stream::ServerTls(s) => Ok(s.get_ref().0),
            Stream::Closed => Err(closed()),
        }
    }

    /// The local end's address.
    ///
    /// # Errors
    /// The connection is closed.
    pub fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.tcp()?.local_addr()
    }
}

/// Asks the kernel to acknowledge what arrives at once (`TCP_QUICKACK`, which it drops after a
/// while, hence before every read). Without it, a server that writes two small pieces in a row
/// (Postfix: its TLS session ticket, then its EHLO reply) has the second held by Nagle's
/// algorithm until our delayed ACK of the first: 40 ms on 3 of 4 sends.
fn quick_ack(stream: &Stream) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Ok(tcp) = stream.tcp() {
        let _ = tcp.set_quickack(true);
    }
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "the connection was closed")
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        quick_ack(this);
        match this {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::ServerTls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Closed => Poll::Ready(Ok(())),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::ServerTls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Closed => Poll::Ready(Err(closed())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::ServerTls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Closed => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::ServerTls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Closed => Poll::Ready(Ok(())),
        }
    }
}

/// Opens a TCP connection with [`CONNECT_TIMEOUT`] and `TCP_NODELAY`, through the server's proxy
/// when it has one.
///
/// # Errors
/// [`ServerError::Transient`]: refused, unreachable, timed out; [`ServerError::Failed`]: the
/// proxy refused.
pub async fn connect(server: &Server) -> Result<TcpStream, ServerError> {
    let name = server.address();
    if let Some(p) = &server.proxy {
        let tunnel = proxy::tunnel(p, &server.host, server.port);
        let what = format!("connecting through proxy {p}");
        return timed(CONNECT_TIMEOUT, &name, &what, tunnel, |e| e).await;
    }
    let connect = TcpStream::connect((server.host.as_str(), server.port));
    let tcp = timed(CONNECT_TIMEOUT, &name, "connecting", connect, |e| {
        ServerError::transient(&name, "connecting failed").with_source(e)
    })
    .await?;
    tcp.set_nodelay(true)
        .map_err(|e| ServerError::transient(&name, "setting TCP_NODELAY failed").with_source(e))?;
    Ok(tcp)
}

/// Runs `fut` with a time limit: its own error becomes a [`ServerError`] through `classify`, and
/// running out of time a transient "`what` timed out after …".
///
/// # Errors
/// As `classify` says, or [`ServerError::Transient`] for the timeout.
pub async fn timed<T, E>(
    limit: Duration,
    server: &str,
    what: &str,
    fut: impl Future<Output = Result<T, E>>,
    classify: impl FnOnce(E) -> ServerError,
) -> Result<T, ServerError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(classify(e)),
        Err(_) => Err(ServerError::transient(
            server,
            format!(
                "{what} timed out after {}",
                humantime::format_duration(limit)
            ),
        )),
    }
}

/// Runs the TLS handshake over `tcp`, verifying the certificate for `server.host`.
///
/// # Errors
/// [`ServerError::Failed`] for an untrusted certificate or a handshake failure (with the rustls
/// reason and a hint), [`ServerError::Transient`] for a timeout.
pub async fn tls(tcp: TcpStream, server: &Server, what: &str) -> Result<Stream, ServerError> {
    let name = server.address();
    let config = client_config(server)?;
    let server_name = ServerName::try_from(server.host.clone()).map_err(|e| {
        ServerError::failed(
            &name,
            format!("\"{}\" is not a valid TLS server name", server.host),
        )
        .with_source(e)
    })?;
    let handshake = TlsConnector::from(config).connect(server_name, tcp);
    let stream = timed(
        CONNECT_TIMEOUT,
        &name,
        "the TLS handshake",
        handshake,
        |e| handshake_failed(&name, what, &e),
    )
    .await?;
    Ok(Stream::Tls(Box::new(stream)))
}

/// A handshake that failed (untrusted certificate, protocol mismatch), with [`TLS_HINT`].
pub fn handshake_failed(server: &str, what: &str, e: &dyn std::fmt::Display) -> ServerError {
    ServerError::failed(
        server,
        format!("{what} failed: the TLS handshake failed ({e})"),
    )
    .with_hint(TLS_HINT)
}

fn client_config(server: &Server) -> Result<Arc<ClientConfig>, ServerError> {
    crate::trust::client_config(server.ca_file.as_deref())
        .map_err(|reason| ServerError::failed(server.address(), reason))
}

/// The TLS setup of a server (the relay): its certificate chain and private key, read from PEM
/// files, with the same provider and protocol versions as the client side.
///
/// # Errors
/// A file is unreadable, holds no certificate or key, or the key does not fit the certificate.
pub fn server_tls(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    use anyhow::Context;
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("failed to read the certificate file {}", cert.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{} holds no PEM certificate", cert.display());
    }
    let key = rustls_pki_types::PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("failed to read the private key file {}", key.display()))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("failed to set up TLS")?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .context("the private key does not fit the certificate")?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// The server side of a TLS handshake over `tcp`, within `limit`.
///
/// # Errors
/// The handshake failed or took too long.
pub async fn accept_tls(
    acceptor: &tokio_rustls::TlsAcceptor,
    tcp: TcpStream,
    limit: Duration,
) -> io::Result<Stream> {
    match tokio::time::timeout(limit, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => Ok(Stream::ServerTls(Box::new(tls))),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the TLS handshake timed out",
        )),
    }
}
