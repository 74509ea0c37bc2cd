//! TLS for the state database through the crate's one rustls (ring) stack: the same trust as every
//! other client here (Mozilla roots, the system store, `[state] ca_file`), and the server's name
//! checked against its certificate whatever the URL's `sslmode`.

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};
use tokio_rustls::{rustls, TlsConnector};

/// Makes one TLS connector per database host. The trust (reading the system store costs a few
/// milliseconds) is set up only when a server actually agrees to TLS, once per process.
#[derive(Clone)]
pub struct MakeRustls {
    ca_file: Option<PathBuf>,
    config: Arc<OnceLock<Result<Arc<rustls::ClientConfig>, String>>>,
}

impl MakeRustls {
    /// A maker trusting the usual roots plus `ca_file`.
    pub fn new(ca_file: Option<PathBuf>) -> Self {
        MakeRustls {
            ca_file,
            config: Arc::default(),
        }
    }
}

/// The connector for one host name.
pub struct Connect {
    maker: MakeRustls,
    name: ServerName<'static>,
}

/// A TLS stream to the database.
pub struct Stream<S>(tokio_rustls::client::TlsStream<S>);

impl<S> MakeTlsConnect<S> for MakeRustls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = Stream<S>;
    type TlsConnect = Connect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> io::Result<Connect> {
        let name = ServerName::try_from(domain.to_string())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        Ok(Connect {
            maker: self.clone(),
            name,
        })
    }
}

impl<S> TlsConnect<S> for Connect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = Stream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Stream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        let maker = self.maker;
        let config = maker
            .config
            .get_or_init(|| crate::trust::client_config(maker.ca_file.as_deref()))
            .clone();
        Box::pin(async move {
            let config = config.map_err(io::Error::other)?;
            let connector = TlsConnector::from(config);
            Ok(Stream(connector.connect(self.name, stream).await?))
        })
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Stream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Stream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for Stream<S> {
    /// No channel binding: SCRAM without `-PLUS`; the certificate check already ties the session
    /// to the server.
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}
