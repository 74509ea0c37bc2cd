//! Which TLS servers mailpilot trusts, for every client connection (SMTP, IMAP, the OAuth
//! endpoints): the Mozilla roots built in, the operating system's trust store (so corporate TLS
//! inspection and private CAs installed with `update-ca-certificates` work; `SSL_CERT_FILE` and
//! `SSL_CERT_DIR` are honoured), and the certificates of a `ca_file` where one is configured.
//! All with rustls and its ring provider.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

/// The built-in and the system roots, read once per process (the system store is a file of
/// ~150 certificates).
fn base_roots() -> &'static RootCertStore {
    static ROOTS: OnceLock<RootCertStore> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let mut roots = RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let native = rustls_native_certs::load_native_certs();
        for error in &native.errors {
            tracing::debug!("part of the system trust store was not read: {error}");
        }
        // A system certificate rustls cannot use (an old or odd one) is skipped, not fatal.
        let (added, skipped) = roots.add_parsable_certificates(native.certs);
        tracing::debug!(added, skipped, "system trust store read");
        roots
    })
}

/// The certificates of the PEM file `path`.
///
/// # Errors
/// The file is unreadable or holds no PEM certificate (the message says which).
pub fn ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("failed to read ca_file {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "ca_file {} holds no PEM certificate",
            path.display()
        ));
    }
    Ok(certs)
}

/// A TLS client setup trusting the built-in and system roots plus the certificates of `extra`
/// (a `ca_file`).
///
/// # Errors
/// `extra` is unusable, or TLS cannot be set up (the message says which).
pub fn client_config(extra: Option<&Path>) -> Result<Arc<ClientConfig>, String> {
    let mut roots = base_roots().clone();
    if let Some(path) = extra {
        for cert in ca_file(path)? {
            roots.add(cert).map_err(|e| {
                format!(
                    "ca_file {} holds an unusable certificate: {e}",
                    path.display()
                )
            })?;
        }
    }
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("failed to set up TLS: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The certificate problem somewhere in `error`'s chain (an untrusted or invalid server
/// certificate), as rustls words it; `None` when the failure is something else.
pub fn certificate_problem(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if let Some(rustls::Error::InvalidCertificate(problem)) = e.downcast_ref::<rustls::Error>()
        {
            return Some(format!("{problem:?}"));
        }
        // io::Error's source() skips the error it wraps (which may be another io::Error): step
        // into it instead.
        cause = match e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The built-in roots are always there; a file without certificates is named.
    #[test]
    fn roots_and_bad_files() {
        assert!(base_roots().len() >= webpki_roots::TLS_SERVER_ROOTS.len());
        let tmp = tempfile::NamedTempFile::new().expect("tmp");
        std::fs::write(tmp.path(), "not a certificate\n").expect("write");
        let err = client_config(Some(tmp.path())).expect_err("no certificate");
        assert!(err.contains("holds no PEM certificate"), "{err}");
        assert!(client_config(None).is_ok());
    }
}
