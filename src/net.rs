//! TCP and TLS for both protocols: connect with a timeout and `TCP_NODELAY`, and TLS with rustls
//! (ring) trusting the Mozilla roots plus an account's `ca_file`.
//!
//! `TCP_NODELAY` matters: SMTP clients write the message body and the final `.` separately, and
//! with Nagle's algorithm the second write waits for the server's delayed ACK — 40 ms per message.

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
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

use crate::config::Server;
use crate::login::ServerError;

/// Connecting and the TLS handshake, each.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// A connection, encrypted or (loopback only, by config validation) not.
#[derive(Debug)]
pub enum Stream {
    /// Plain TCP (before STARTTLS, or `tls = "none"` to a loopback host).
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<TlsStream<TcpStream>>),
}

impl Stream {
    /// Whether the connection is encrypted.
    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }

    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => s.get_ref().0,
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
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
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

impl lettre::transport::smtp::client::AsyncTokioStream for Stream {
    fn peer_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.tcp().peer_addr()
    }
}

/// `host:port` of a server, for messages.
pub fn name(server: &Server) -> String {
    format!("{}:{}", server.host, server.port)
}

/// Opens a TCP connection with [`CONNECT_TIMEOUT`] and `TCP_NODELAY`.
///
/// # Errors
/// [`ServerError::Transient`]: refused, unreachable, timed out.
pub async fn connect(server: &Server) -> Result<TcpStream, ServerError> {
    let name = name(server);
    let transient = |reason: String, source: Option<io::Error>| ServerError::Transient {
        server: name.clone(),
        reason,
        source: source.map(|e| Box::new(e) as _),
    };
    let tcp = match tokio::time::timeout(
        CONNECT_TIMEOUT,
        TcpStream::connect((server.host.as_str(), server.port)),
    )
    .await
    {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => return Err(transient("connecting failed".into(), Some(e))),
        Err(_) => {
            return Err(transient(
                format!(
                    "connecting timed out after {}",
                    humantime::format_duration(CONNECT_TIMEOUT)
                ),
                None,
            ))
        }
    };
    tcp.set_nodelay(true)
        .map_err(|e| transient("setting TCP_NODELAY failed".into(), Some(e)))?;
    Ok(tcp)
}

/// Runs the TLS handshake over `tcp`, verifying the certificate for `server.host`.
///
/// # Errors
/// [`ServerError::Failed`] for an untrusted certificate or a handshake failure (with the rustls
/// reason and a hint), [`ServerError::Transient`] for a timeout.
pub async fn tls(tcp: TcpStream, server: &Server, what: &str) -> Result<Stream, ServerError> {
    let name = name(server);
    let config = client_config(server)?;
    let server_name =
        ServerName::try_from(server.host.clone()).map_err(|e| ServerError::Failed {
            server: name.clone(),
            reason: format!("\"{}\" is not a valid TLS server name", server.host),
            hint: None,
            source: Some(Box::new(e)),
        })?;
    match tokio::time::timeout(
        CONNECT_TIMEOUT,
        TlsConnector::from(config).connect(server_name, tcp),
    )
    .await
    {
        Ok(Ok(stream)) => Ok(Stream::Tls(Box::new(stream))),
        Ok(Err(e)) => Err(ServerError::Failed {
            server: name,
            reason: format!("{what} failed: the TLS handshake failed ({e})"),
            hint: Some(TLS_HINT.into()),
            source: None,
        }),
        Err(_) => Err(ServerError::Transient {
            server: name,
            reason: format!(
                "the TLS handshake timed out after {}",
                humantime::format_duration(CONNECT_TIMEOUT)
            ),
            source: None,
        }),
    }
}

/// The hint for a failed handshake.
pub const TLS_HINT: &str =
    "the server's certificate is not trusted for this host name: check host, or set ca_file to the CA that signed it";

fn client_config(server: &Server) -> Result<Arc<ClientConfig>, ServerError> {
    let failed = |reason: String, source: Option<Box<dyn std::error::Error + Send + Sync>>| {
        ServerError::Failed {
            server: name(server),
            reason,
            hint: None,
            source,
        }
    };
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(ca) = &server.ca_file {
        let certs = CertificateDer::pem_file_iter(ca)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| {
                failed(
                    format!("failed to read ca_file {}", ca.display()),
                    Some(Box::new(e)),
                )
            })?;
        if certs.is_empty() {
            return Err(failed(
                format!("ca_file {} holds no PEM certificate", ca.display()),
                None,
            ));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| {
                failed(
                    format!("ca_file {} holds an unusable certificate", ca.display()),
                    Some(Box::new(e)),
                )
            })?;
        }
    }
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| failed("failed to set up TLS".into(), Some(Box::new(e))))?
            .with_root_certificates(roots)
            .with_no_client_auth();
    Ok(Arc::new(config))
}
