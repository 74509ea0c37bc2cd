//! Secrets at rest: refresh and access tokens sealed with an AEAD (ChaCha20-Poly1305, ring)
//! under a 256-bit key read from `[state] key_file` or a systemd credential
//! (`$CREDENTIALS_DIRECTORY/mailpilot.key`, from `LoadCredentialEncrypted=`). A sealed value is
//! `seal1:` and the base64 of a random 96-bit nonce, the ciphertext and its tag; the context (the
//! account and the field) is authenticated too, so a value cannot be moved to another account or
//! field. A key is named by its id (the first 8 hex digits of its SHA-256), which a sealed
//! store records, so a wrong key is told apart from a damaged file.

use std::fmt;
use std::path::Path;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

use crate::error::KeyError;
use crate::secret::Secret;

/// The prefix of a sealed value.
const PREFIX: &str = "seal1:";
/// Key length in bytes.
pub const KEY_LEN: usize = 32;

/// A key that seals and opens stored secrets.
pub struct Key {
    key: LessSafeKey,
    id: String,
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({})", self.id)
    }
}

fn key_error(reason: String, hint: &str) -> KeyError {
    KeyError {
        reason,
        hint: hint.to_string(),
    }
}

impl Key {
    /// A key from its 32 bytes.
    ///
    /// # Errors
    /// Not 32 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, bytes).map_err(|_| {
            key_error(
                format!("a key is {KEY_LEN} bytes, not {}", bytes.len()),
                "make one with: head -c 32 /dev/urandom > KEY_FILE && chmod 600 KEY_FILE",
            )
        })?;
        let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
        let id = digest.as_ref()[..4]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok(Key {
            key: LessSafeKey::new(unbound),
            id,
        })
    }

    /// Reads the key file at `path`: 32 bytes, or their base64 on one line. Refused when group
    /// or others may read it.
    ///
    /// # Errors
    /// [`KeyError`]: missing, unreadable, readable by others, or not a key.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        use std::os::unix::fs::MetadataExt;
        let shown = path.display();
        let meta = std::fs::metadata(path).map_err(|e| {
            key_error(
                format!("the state key {shown} cannot be read: {e}"),
                "set [state] key_file to the key the tokens were sealed with (or give it as the systemd credential mailpilot.key)",
            )
        })?;
        if !meta.is_file() || meta.len() > 1024 {
            return Err(key_error(
                format!("the state key {shown} is not a key file"),
                "make one with: head -c 32 /dev/urandom > KEY_FILE && chmod 600 KEY_FILE",
            ));
        }
        if meta.mode() & 0o077 != 0 {
            return Err(key_error(
                format!(
                    "the state key {shown} may be read by others (mode {:o})",
                    meta.mode() & 0o777
                ),
                &format!("chmod 600 {shown}"),
            ));
        }
        let bytes = crate::fsutil::read_limited(path, 1024).map_err(|e| {
            key_error(
                format!("the state key {shown} cannot be read: {e:#}"),
                "check the file",
            )
        })?;
        if bytes.len() == KEY_LEN {
            return Self::from_bytes(&bytes);
        }
        let text = String::from_utf8_lossy(&bytes);
        match STANDARD.decode(text.trim()) {
            Ok(decoded) if decoded.len() == KEY_LEN => Self::from_bytes(&decoded),
            _ => Err(key_error(
                format!("the state key {shown} holds neither {KEY_LEN} bytes nor their base64"),
                "make one with: head -c 32 /dev/urandom > KEY_FILE && chmod 600 KEY_FILE",
            )),
        }
    }

    /// The key's id (8 hex digits), as sealed stores record it.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// `plain` sealed for `context`.
    ///
    /// # Errors
    /// The system's random number generator failed (nothing is sealed with a made-up nonce).
    pub fn seal(&self, plain: &Secret, context: &str) -> Result<String, String> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| "the system random number generator failed".to_string())?;
        let mut data = plain.expose().as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.as_bytes()),
                &mut data,
            )
            .map_err(|_| "sealing failed".to_string())?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        Ok(format!("{PREFIX}{}", STANDARD.encode(out)))
    }

    /// The secret in `sealed` (made by [`Key::seal`] with this key and `context`).
    ///
    /// # Errors
    /// Not a sealed value, or not sealed with this key for this context.
    pub fn open(&self, sealed: &str, context: &str) -> Result<Secret, String> {
        let raw = sealed
            .strip_prefix(PREFIX)
            .and_then(|b| STANDARD.decode(b).ok())
            .filter(|raw| raw.len() >= NONCE_LEN + CHACHA20_POLY1305.tag_len())
            .ok_or_else(|| "not a sealed value".to_string())?;
        let (nonce, data) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| "bad nonce".to_string())?;
        let mut data = data.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(context.as_bytes()), &mut data)
            .map_err(|_| {
                "it does not open with this key (damaged, or moved from elsewhere)".to_string()
            })?;
        String::from_utf8(plain.to_vec())
            .map(Secret::new)
            .map_err(|_| "it is not text".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Round trip; the context and the key both matter; nothing leaks through Debug.
    #[test]
    fn seal_and_open() {
        let key = Key::from_bytes(&[7u8; KEY_LEN]).expect("key");
        let other = Key::from_bytes(&[8u8; KEY_LEN]).expect("key");
        let sealed = key
            .seal(&Secret::new("rt-secret"), "token work refresh_token")
            .expect("seal");
        assert!(sealed.starts_with(PREFIX) && !sealed.contains("rt-secret"));
        assert_eq!(
            key.open(&sealed, "token work refresh_token")
                .expect("open")
                .expose(),
            "rt-secret"
        );
        assert!(key.open(&sealed, "token other refresh_token").is_err());
        assert!(other.open(&sealed, "token work refresh_token").is_err());
        let twice = |k: &Key| k.seal(&Secret::new("x"), "c").expect("seal");
        assert_ne!(twice(&key), twice(&key));
        assert_ne!(key.id(), other.id());
        assert_eq!(format!("{key:?}"), format!("Key({})", key.id()));
        assert!(Key::from_bytes(&[0u8; 16]).is_err());
    }

    proptest::proptest! {
        /// Any text round-trips; any change to a sealed value, or to its context, is refused;
        /// any string at all given to `open` is an error, never a panic.
        #[test]
        fn sealed_values_are_tamper_evident(
            plain in "\\PC{0,64}",
            flip in 0usize..200,
            junk in "\\PC{0,80}",
        ) {
            let key = Key::from_bytes(&[3u8; KEY_LEN]).expect("key");
            let sealed = key.seal(&Secret::new(plain.clone()), "ctx").expect("seal");
            let opened = key.open(&sealed, "ctx").expect("open");
            proptest::prop_assert_eq!(opened.expose(), plain.as_str());
            proptest::prop_assert!(key.open(&sealed, "ctx2").is_err());
            let mut raw = STANDARD.decode(&sealed[PREFIX.len()..]).expect("b64");
            let at = flip % raw.len();
            raw[at] ^= 0x01;
            let tampered = format!("{PREFIX}{}", STANDARD.encode(raw));
            proptest::prop_assert!(key.open(&tampered, "ctx").is_err());
            let _ = key.open(&junk, "ctx");
            let _ = key.open(&format!("{PREFIX}{junk}"), "ctx");
        }
    }

    /// Key files: raw or base64; refused when others may read them.
    #[test]
    fn key_files() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tmp");
        let raw = dir.path().join("raw.key");
        std::fs::write(&raw, [9u8; KEY_LEN]).expect("write");
        std::fs::set_permissions(&raw, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let b64 = dir.path().join("b64.key");
        std::fs::write(&b64, format!("{}\n", STANDARD.encode([9u8; KEY_LEN]))).expect("write");
        std::fs::set_permissions(&b64, std::fs::Permissions::from_mode(0o400)).expect("chmod");
        assert_eq!(
            Key::load(&raw).expect("raw").id(),
            Key::load(&b64).expect("b64").id()
        );
        std::fs::set_permissions(&raw, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = Key::load(&raw).expect_err("open to others");
        assert!(err.reason.contains("may be read by others"), "{err}");
        assert!(Key::load(&dir.path().join("none")).is_err());
    }
}
