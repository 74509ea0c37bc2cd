//! Signed JWT assertions (RFC 7523) made with a program's own key: a `private_key_jwt` client
//! assertion (§2.2) for client credentials with a certificate, as Entra requires it (RS256, the
//! certificate's thumbprint in the header), and a JWT bearer grant (§2.1) for a Google service
//! account acting for a Workspace user (domain-wide delegation). Signed with ring (already the
//! TLS provider); keys and assertions are secrets and never shown.

use std::path::Path;

use anyhow::{bail, Context, Result};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{RsaKeyPair, RSA_PKCS1_SHA256};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

use crate::secret::Secret;

/// How long an assertion is valid: long enough for one token request, short enough that a copy
/// is worthless.
const ASSERTION_LIFETIME: u64 = 300;

/// The largest key or certificate file read.
const MAX_PEM_BYTES: u64 = 64 * 1024;

/// What the app signs with: its RSA key and the certificate registered for it.
pub struct AppKey {
    key: RsaKeyPair,
    /// SHA-1 of the certificate (`x5t`, which Entra looks the key up by).
    x5t: String,
    /// SHA-256 of the certificate (`x5t#S256`).
    x5t_s256: String,
}

impl std::fmt::Debug for AppKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AppKey([redacted])")
    }
}

impl AppKey {
    /// Reads the PEM certificate and the PEM RSA key (PKCS#8 or PKCS#1); the key file must not be
    /// readable by group or others.
    ///
    /// # Errors
    /// A file is unreadable, too open, or holds no usable certificate or RSA key.
    pub fn load(certificate: &Path, key: &Path) -> Result<AppKey> {
        check_private(key)?;
        let pem = crate::fsutil::read_limited(certificate, MAX_PEM_BYTES)?;
        let cert = CertificateDer::pem_slice_iter(&pem)
            .next()
            .transpose()
            .ok()
            .flatten()
            .with_context(|| format!("{} holds no PEM certificate", certificate.display()))?;
        let pem = Secret::new(
            String::from_utf8(crate::fsutil::read_limited(key, MAX_PEM_BYTES)?)
                .with_context(|| format!("{} is not a PEM file", key.display()))?,
        );
        let pair = rsa_key(&pem, key)?;
        let sha1 = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, cert.as_ref());
        Ok(AppKey {
            key: pair,
            x5t: URL_SAFE_NO_PAD.encode(sha1.as_ref()),
            x5t_s256: URL_SAFE_NO_PAD.encode(Sha256::digest(cert.as_ref())),
        })
    }

    /// A client assertion for `client_id` at `token_url`, valid from `now` for five minutes,
    /// with a fresh `jti` (servers refuse a replayed one).
    ///
    /// # Errors
    /// No randomness or signing failed.
    pub fn client_assertion(&self, client_id: &str, token_url: &str, now: u64) -> Result<Secret> {
        let header = serde_json::json!({
            "alg": "RS256",
            "typ": "JWT",
            "x5t": self.x5t,
            "x5t#S256": self.x5t_s256,
        });
        let claims = serde_json::json!({
            "aud": token_url,
            "iss": client_id,
            "sub": client_id,
            "jti": random_id()?,
            "iat": now,
            "nbf": now,
            "exp": now + ASSERTION_LIFETIME,
        });
        self.sign(&header, &claims)
    }

    fn sign(&self, header: &serde_json::Value, claims: &serde_json::Value) -> Result<Secret> {
        sign(&self.key, header, claims)
    }
}

/// A Google service account's key file (the JSON Google issues), as far as mailpilot needs it.
pub struct ServiceAccountKey {
    key: RsaKeyPair,
    /// The service account (`…@….iam.gserviceaccount.com`), the assertion's issuer.
    pub client_email: String,
    /// The key's id (`kid`).
    key_id: String,
}

impl std::fmt::Debug for ServiceAccountKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ServiceAccountKey({}, [redacted])", self.client_email)
    }
}

/// The fields of the key file that are read.
#[derive(serde::Deserialize)]
struct KeyFile {
    client_email: String,
    private_key: String,
    #[serde(default)]
    private_key_id: String,
}

impl ServiceAccountKey {
    /// Reads the JSON key file; like any private key it must not be readable by group or others.
    ///
    /// # Errors
    /// The file is unreadable, too open, not a service account key, or its key is unusable.
    pub fn load(path: &Path) -> Result<ServiceAccountKey> {
        check_private(path)?;
        let bytes = crate::fsutil::read_limited(path, MAX_PEM_BYTES)?;
        let file: KeyFile = serde_json::from_slice(&bytes).map_err(|e| {
            anyhow::anyhow!(
                "{} is not a service account key file (the JSON Google issues): {}",
                path.display(),
                // serde's message names the field, never the key.
                e.to_string().lines().next().unwrap_or_default()
            )
        })?;
        let pem = Secret::new(file.private_key);
        Ok(ServiceAccountKey {
            key: rsa_key(&pem, path)?,
            client_email: file.client_email,
            key_id: file.private_key_id,
        })
    }

    /// The grant assertion (RFC 7523 §2.1) to act for `user` with `scopes` at `token_url`, valid
    /// for an hour from `now` (Google's limit).
    ///
    /// # Errors
    /// Signing failed.
    pub fn grant_assertion(
        &self,
        user: &str,
        scopes: &[String],
        token_url: &str,
        now: u64,
    ) -> Result<Secret> {
        let header = serde_json::json!({"alg": "RS256", "typ": "JWT", "kid": self.key_id});
        let claims = serde_json::json!({
            "iss": self.client_email,
            "sub": user,
            "scope": scopes.join(" "),
            "aud": token_url,
            "iat": now,
            "exp": now + 3600,
        });
        sign(&self.key, &header, &claims)
    }
}

/// An RSA key from PEM (PKCS#8 or PKCS#1); `origin` names the file in messages.
fn rsa_key(pem: &Secret, origin: &Path) -> Result<RsaKeyPair> {
    let der = PrivateKeyDer::from_pem_slice(pem.expose().as_bytes())
        .with_context(|| format!("{} holds no PEM private key", origin.display()))?;
    match &der {
        PrivateKeyDer::Pkcs8(k) => RsaKeyPair::from_pkcs8(k.secret_pkcs8_der()),
        PrivateKeyDer::Pkcs1(k) => RsaKeyPair::from_der(k.secret_pkcs1_der()),
        _ => bail!(
            "{} holds a key that is not RSA (RS256 needs one)",
            origin.display()
        ),
    }
    .map_err(|e| anyhow::anyhow!("{} holds an unusable RSA key ({e})", origin.display()))
}

/// `header.claims.signature`, each part base64url, signed RS256 with `key`.
fn sign(
    key: &RsaKeyPair,
    header: &serde_json::Value,
    claims: &serde_json::Value,
) -> Result<Secret> {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let mut signature = vec![0; key.public().modulus_len()];
    key.sign(
        &RSA_PKCS1_SHA256,
        &SystemRandom::new(),
        input.as_bytes(),
        &mut signature,
    )
    .map_err(|_| anyhow::anyhow!("signing the assertion failed"))?;
    Ok(Secret::new(format!(
        "{input}.{}",
        URL_SAFE_NO_PAD.encode(signature)
    )))
}

/// When the first certificate in the PEM file `path` stops being valid (its `notAfter`, unix
/// seconds): the app's credential ends then, and a person must upload a new one before.
///
/// # Errors
/// The file is unreadable or holds no certificate this reader understands.
pub fn certificate_expiry(path: &Path) -> Result<u64> {
    let pem = crate::fsutil::read_limited(path, MAX_PEM_BYTES)?;
    let cert = CertificateDer::pem_slice_iter(&pem)
        .next()
        .transpose()
        .ok()
        .flatten()
        .with_context(|| format!("{} holds no PEM certificate", path.display()))?;
    not_after(cert.as_ref()).with_context(|| {
        format!(
            "{} holds a certificate whose validity cannot be read",
            path.display()
        )
    })
}

/// `notAfter` of a DER X.509 certificate: Certificate → tbsCertificate → (version) serial,
/// signature, issuer → validity → notAfter (UTCTime or GeneralizedTime).
fn not_after(der: &[u8]) -> Option<u64> {
    let (_, certificate, _) = tlv(der)?;
    let (_, mut tbs, _) = tlv(certificate)?;
    // [0] EXPLICIT version, when present.
    if tbs.first() == Some(&0xA0) {
        tbs = tlv(tbs)?.2;
    }
    for _ in 0..3 {
        tbs = tlv(tbs)?.2; // serial, signature algorithm, issuer
    }
    let (_, validity, _) = tlv(tbs)?;
    let (_, _, rest) = tlv(validity)?; // notBefore
    let (tag, time, _) = tlv(rest)?;
    let text = std::str::from_utf8(time).ok()?;
    let full = match tag {
        0x17 => {
            // UTCTime: YYMMDDHHMMSSZ, years 1950–2049.
            let yy: u32 = text.get(0..2)?.parse().ok()?;
            format!("{}{text}", if yy < 50 { "20" } else { "19" })
        }
        0x18 => text.to_string(),
        _ => return None,
    };
    let at =
        chrono::NaiveDateTime::parse_from_str(full.trim_end_matches('Z'), "%Y%m%d%H%M%S").ok()?;
    u64::try_from(at.and_utc().timestamp()).ok()
}

/// One DER element: its tag, its contents, and what follows it.
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first & 0x80 == 0 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7F);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// 128 random bits, base64url: a `jti`.
fn random_id() -> Result<String> {
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| anyhow::anyhow!("no randomness for the assertion id"))?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// Refuses a key file that group or others may read (or that is not a regular file).
fn check_private(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta =
        std::fs::metadata(path).with_context(|| format!("failed to read {}", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        bail!(
            "private key {} is readable by others (mode {mode:o}); refusing to use it: run `chmod 600 {}`",
            path.display(),
            path.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Malformed DER is `None`, never a panic; lengths past the input are refused.
    #[test]
    fn der_reading_is_total() {
        assert_eq!(not_after(&[]), None);
        assert_eq!(not_after(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
        assert_eq!(
            tlv(&[0x02, 0x01, 0x05, 0x09]),
            Some((0x02, &[0x05][..], &[0x09][..]))
        );
    }

    proptest::proptest! {
        /// Any bytes at all: no panic.
        #[test]
        fn any_der_is_handled(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let _ = not_after(&bytes);
        }
    }
}
