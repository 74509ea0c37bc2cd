//! Token files: `tokens/<account>.json` (the grant), `tokens/<account>.lock` (the refresh lock) and
//! `tokens/<account>.error.json` (the last refresh failure, for `auth status`), and
//! `tokens/discovery/<hash>.json` (authorization server metadata, see [`super::discovery`]).
//!
//! Never talks to the network. Files are 0600 in a 0700 directory and are replaced atomically (temp
//! file in the same directory, fsync, rename, fsync of the directory), so a crash at any moment leaves
//! either the old or the new file. A corrupt file or one written by a newer mailpilot is an error that
//! names it; it is never overwritten behind the user's back.

use std::fs::{self, File};
use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::discovery::Metadata;
use super::record;
use super::token::StoredToken;
use crate::error::AuthErrorKind;
use crate::fsutil::{read_optional, write_atomic};

pub use super::record::{FORMAT_VERSION, SEALED_VERSION};

/// Where grants live: files on this host ([`FileStore`]) or the shared database
/// ([`super::pg::PgStore`]). Both keep the same records and give the same guarantees; the database
/// makes them hold across hosts.
#[allow(
    async_fn_in_trait,
    reason = "used through generics on a current-thread runtime; no Send bound is wanted"
)]
pub trait TokenStore {
    /// Proof of holding an account's refresh lock; dropping it releases the lock.
    type Lock;

    /// The stored grant of `account`, if any.
    ///
    /// # Errors
    /// The record cannot be read, is corrupt, or has a foreign format version; the store is down.
    async fn load(&self, account: &str) -> Result<Option<StoredToken>>;

    /// Replaces the grant of `token.account` atomically (durable when this returns).
    ///
    /// # Errors
    /// Any storage failure, with its place.
    async fn save(&self, token: &StoredToken) -> Result<()>;

    /// Deletes the grant and its error record; `false` when there was none.
    ///
    /// # Errors
    /// Any storage failure, with its place.
    async fn delete(&self, account: &str) -> Result<bool>;

    /// Takes the account's exclusive refresh lock, waiting up to `wait` for a holder to release
    /// it; `None` when the wait ran out.
    ///
    /// # Errors
    /// The lock cannot be taken for a reason other than contention.
    async fn lock(&self, account: &str, wait: Duration) -> Result<Option<Self::Lock>>;

    /// The last recorded refresh failure.
    ///
    /// # Errors
    /// The record cannot be read or parsed.
    async fn last_error(&self, account: &str) -> Result<Option<LastError>>;

    /// Records (or with `None` clears) the last refresh failure.
    ///
    /// # Errors
    /// Any storage failure, with its place.
    async fn set_last_error(&self, account: &str, error: Option<&LastError>) -> Result<()>;

    /// The cached metadata of authorization server `issuer`, if any.
    ///
    /// # Errors
    /// The cache cannot be read or is corrupt.
    async fn load_metadata(&self, issuer: &str) -> Result<Option<Metadata>>;

    /// Caches the metadata of `issuer`, replacing what was there.
    ///
    /// # Errors
    /// Any storage failure, with its place.
    async fn save_metadata(&self, issuer: &str, metadata: &Metadata) -> Result<()>;

    /// Whether `account`'s stored grant is sealed (`None`: none stored). Never opens it.
    ///
    /// # Errors
    /// The record cannot be read or is not JSON.
    async fn is_sealed(&self, account: &str) -> Result<Option<bool>>;
}

/// A refresh failure as remembered for `auth status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastError {
    /// When it happened, unix seconds.
    pub at: u64,
    /// What kind of failure it was.
    pub kind: AuthErrorKind,
    /// The error text (never contains a secret).
    pub message: String,
    /// When the current streak of failures of this kind began, unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<u64>,
    /// The token endpoint answered, but not with OAuth (a streak of these is escalated).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unexpected: bool,
}

/// How often a process waiting for a token lock file retries it.
const LOCK_POLL: Duration = Duration::from_millis(20);

/// The file-backed store under `$XDG_STATE_HOME/mailpilot/tokens`.
#[derive(Debug, Clone)]
pub struct FileStore {
    dir: PathBuf,
    /// The key tokens are sealed with; `None`: stored in plain (mode 0600 only).
    key: Option<std::sync::Arc<crate::seal::Key>>,
}

/// A held `flock` on `<account>.lock`; released when dropped or when the process dies.
#[derive(Debug)]
pub struct FileLock {
    _file: File,
}

/// A metadata cache file: the configured issuer it was fetched for, and the document.
#[derive(Serialize, Deserialize)]
struct CachedMetadata {
    issuer: String,
    metadata: Metadata,
}

impl FileStore {
    /// A store in `dir` (created 0700 on first write).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            key: None,
        }
    }

    /// The same store, sealing the tokens it writes with `key` (and opening sealed ones).
    pub fn with_key(mut self, key: Option<std::sync::Arc<crate::seal::Key>>) -> Self {
        self.key = key;
        self
    }

    /// The raw record of `account`, as stored (for migration between backends).
    ///
    /// # Errors
    /// The file is unsafe to use or unreadable.
    pub fn record(&self, account: &str) -> Result<Option<String>> {
        let path = self.token_path(account);
        if !check_token_file(&path)? {
            return Ok(None);
        }
        read_optional(&path)?
            .map(|bytes| {
                String::from_utf8(bytes)
                    .with_context(|| format!("token file {} is not UTF-8", path.display()))
            })
            .transpose()
    }

    /// Stores a record as it is (already encoded, maybe sealed), replacing the file atomically.
    ///
    /// # Errors
    /// Any filesystem failure, with the path.
    pub fn put_record(&self, account: &str, record: &str) -> Result<()> {
        self.ensure_dir()?;
        write_atomic(&self.token_path(account), record.as_bytes())
    }

    /// The accounts with a token file.
    ///
    /// # Errors
    /// The directory cannot be read.
    pub fn accounts(&self) -> Result<Vec<String>> {
        let mut names = crate::fsutil::names_with_suffix(&self.dir, ".json")?;
        names.retain(|name| !name.ends_with(".error"));
        Ok(names)
    }

    /// The directory holding the files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The grant file of `account`.
    pub fn token_path(&self, account: &str) -> PathBuf {
        self.dir.join(format!("{account}.json"))
    }

    fn error_path(&self, account: &str) -> PathBuf {
        self.dir.join(format!("{account}.error.json"))
    }

    fn lock_path(&self, account: &str) -> PathBuf {
        self.dir.join(format!("{account}.lock"))
    }

    /// `discovery/<first 16 hex digits of SHA-256(issuer)>.json`: issuers are URLs, not names.
    fn metadata_path(&self, issuer: &str) -> PathBuf {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(issuer.as_bytes());
        let name: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        self.dir.join("discovery").join(format!("{name}.json"))
    }

    /// Creates the directory with mode 0700 (missing parents too, also 0700), and tightens the
    /// directory's own mode if someone loosened it. Existing parents are left as they are: they
    /// may be shared (`/tmp`, a home directory).
    fn ensure_dir(&self) -> Result<()> {
        crate::fsutil::private_dir(&self.dir)?;
        let mode = fs::metadata(&self.dir)
            .with_context(|| format!("failed to read metadata of {}", self.dir.display()))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700))
                .with_context(|| format!("failed to set mode 0700 on {}", self.dir.display()))?;
        }
        Ok(())
    }
}

fn remove_optional(path: &Path) -> Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("failed to delete {}", path.display())),
    }
}

/// Whether the token file exists, after making sure it is safe to use: a regular file (not a
/// link), owned by the user running mailpilot (another user's grant is refused), and readable by
/// nobody else (a looser mode is tightened to 0600, with a warning).
///
/// # Errors
/// Not a regular file, owned by another user, or its mode cannot be fixed.
fn check_token_file(path: &Path) -> Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e).with_context(|| format!("failed to read {}", path.display())),
    };
    if !meta.is_file() {
        bail!(
            "token file {} is not a regular file; refusing to use it",
            path.display()
        );
    }
    // The owner of /proc/self is the user this process runs as.
    if let Ok(me) = fs::metadata("/proc/self").map(|m| m.uid()) {
        if meta.uid() != me {
            bail!(
                "token file {} belongs to user id {}, not to the user running mailpilot ({me}); refusing to use another user's grant (run mailpilot as that user)",
                path.display(),
                meta.uid()
            );
        }
    }
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))
            .with_context(|| format!("failed to set mode 0600 on {}", path.display()))?;
        tracing::warn!(
            file = %path.display(),
            "token file was readable by others (mode {mode:o}); set it to 0600"
        );
    }
    Ok(true)
}

impl TokenStore for FileStore {
    type Lock = FileLock;

    async fn load(&self, account: &str) -> Result<Option<StoredToken>> {
        let path = self.token_path(account);
        if !check_token_file(&path)? {
            return Ok(None);
        }
        let what = format!("token file {}", path.display());
        read_optional(&path)?
            .map(|bytes| record::decode(&bytes, &what, account, self.key.as_deref()))
            .transpose()
    }

    async fn save(&self, token: &StoredToken) -> Result<()> {
        self.ensure_dir()?;
        let bytes = record::encode(token, self.key.as_deref())?;
        write_atomic(&self.token_path(&token.account), &bytes)
    }

    async fn delete(&self, account: &str) -> Result<bool> {
        remove_optional(&self.error_path(account))?;
        let existed = remove_optional(&self.token_path(account))?;
        if existed {
            File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .with_context(|| format!("failed to fsync directory {}", self.dir.display()))?;
        }
        Ok(existed)
    }

    async fn lock(&self, account: &str, wait: Duration) -> Result<Option<FileLock>> {
        self.ensure_dir()?;
        let lock = self.lock_path(account);
        let taken =
            crate::fsutil::wait_for_lock(|| crate::fsutil::try_lock(&lock), Some(wait), LOCK_POLL);
        Ok(taken.await?.map(|file| FileLock { _file: file }))
    }

    async fn is_sealed(&self, account: &str) -> Result<Option<bool>> {
        let path = self.token_path(account);
        let Some(bytes) = read_optional(&path)? else {
            return Ok(None);
        };
        let what = format!("token file {}", path.display());
        Ok(Some(record::version(&bytes, &what)? == SEALED_VERSION))
    }

    async fn last_error(&self, account: &str) -> Result<Option<LastError>> {
        let path = self.error_path(account);
        read_optional(&path)?
            .map(|bytes| {
                serde_json::from_slice(&bytes)
                    .with_context(|| format!("{} is corrupt", path.display()))
            })
            .transpose()
    }

    async fn load_metadata(&self, issuer: &str) -> Result<Option<Metadata>> {
        let path = self.metadata_path(issuer);
        let Some(bytes) = read_optional(&path)? else {
            return Ok(None);
        };
        let cached: CachedMetadata = serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is corrupt", path.display()))?;
        Ok((cached.issuer == issuer).then_some(cached.metadata))
    }

    async fn save_metadata(&self, issuer: &str, metadata: &Metadata) -> Result<()> {
        let path = self.metadata_path(issuer);
        if let Some(dir) = path.parent() {
            crate::fsutil::private_dir(dir)?;
        }
        let cached = CachedMetadata {
            issuer: issuer.to_string(),
            metadata: metadata.clone(),
        };
        let bytes = serde_json::to_vec_pretty(&cached).context("failed to encode metadata")?;
        write_atomic(&path, &bytes)
    }

    async fn set_last_error(&self, account: &str, error: Option<&LastError>) -> Result<()> {
        let path = self.error_path(account);
        match error {
            None => remove_optional(&path).map(|_| ()),
            Some(error) => {
                self.ensure_dir()?;
                let bytes =
                    serde_json::to_vec_pretty(error).context("failed to encode error record")?;
                write_atomic(&path, &bytes)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    fn token(account: &str) -> StoredToken {
        StoredToken {
            account: account.into(),
            access_token: Secret::new("at-1"),
            expires_at: 2_000,
            refresh_token: Secret::new("rt-1"),
            scope: Some("mail".into()),
            obtained_at: 1_000,
            refreshed_at: 1_000,
        }
    }

    /// Save then load round-trips; files are 0600 in a 0700 directory; no temp file remains.
    #[tokio::test]
    async fn round_trip_and_modes() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = FileStore::new(tmp.path().join("state/tokens"));
        store.save(&token("work")).await.expect("save");
        assert_eq!(store.load("work").await.expect("load"), Some(token("work")));
        let mode = |p: &Path| fs::metadata(p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode(&store.token_path("work")), 0o600);
        assert_eq!(mode(store.dir()), 0o700);
        assert_eq!(mode(&tmp.path().join("state")), 0o700);
        let names: Vec<_> = fs::read_dir(store.dir())
            .expect("dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, ["work.json"]);
    }

    /// An existing parent directory keeps its mode (it may be /tmp or a home directory).
    #[tokio::test]
    async fn existing_parent_untouched() {
        let tmp = tempfile::tempdir().expect("tempdir");
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
        let store = FileStore::new(tmp.path().join("tokens"));
        store.save(&token("work")).await.expect("save");
        let mode = fs::metadata(tmp.path()).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o755);
    }

    /// Corrupt and foreign-version files are errors naming the file, and are left as they were.
    #[tokio::test]
    async fn corrupt_and_foreign_files() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = FileStore::new(tmp.path());
        let path = store.token_path("work");
        fs::write(&path, "{\"access_tok").expect("write");
        let err = format!("{:#}", store.load("work").await.expect_err("corrupt"));
        assert!(
            err.contains(&format!("token file {} is corrupt", path.display())),
            "{err}"
        );
        fs::write(&path, "{\"version\": 3}").expect("write");
        let err = format!("{:#}", store.load("work").await.expect_err("foreign"));
        assert!(err.contains("has format version 3"), "{err}");
        assert_eq!(fs::read_to_string(&path).expect("read"), "{\"version\": 3}");
    }

    /// Sealed files round-trip with their key, hold neither token in clear, and say which key
    /// they need; a value moved from another account's file does not open.
    #[tokio::test]
    async fn sealed_files() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let key = std::sync::Arc::new(crate::seal::Key::from_bytes(&[5u8; 32]).expect("key"));
        let sealed = FileStore::new(tmp.path()).with_key(Some(key.clone()));
        sealed.save(&token("work")).await.expect("save");
        sealed.save(&token("other")).await.expect("save");
        assert_eq!(
            sealed.load("work").await.expect("load"),
            Some(token("work"))
        );
        let text = fs::read_to_string(sealed.token_path("work")).expect("read");
        assert!(!text.contains("rt-1") && !text.contains("at-1"), "{text}");
        let err = FileStore::new(tmp.path())
            .load("work")
            .await
            .expect_err("no key");
        assert!(
            err.downcast_ref::<crate::error::KeyError>().is_some(),
            "{err:#}"
        );
        // Another account's sealed refresh token pasted into this file: refused as corrupt.
        let other = fs::read_to_string(sealed.token_path("other")).expect("read");
        let field = |t: &str| {
            t.split("\"refresh_token\": \"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .expect("field")
                .to_string()
        };
        fs::write(
            sealed.token_path("work"),
            text.replace(&field(&text), &field(&other)),
        )
        .expect("write");
        let err = format!("{:#}", sealed.load("work").await.expect_err("moved"));
        assert!(err.contains("is corrupt (refresh_token:"), "{err}");
    }

    /// A second lock attempt on the same account fails while the first is held.
    #[tokio::test]
    async fn lock_is_exclusive() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = FileStore::new(tmp.path());
        let held = store
            .lock("work", Duration::ZERO)
            .await
            .expect("lock")
            .expect("free");
        assert!(store
            .lock("work", Duration::ZERO)
            .await
            .expect("lock")
            .is_none());
        assert!(store
            .lock("other", Duration::ZERO)
            .await
            .expect("lock")
            .is_some());
        drop(held);
        assert!(store
            .lock("work", Duration::ZERO)
            .await
            .expect("lock")
            .is_some());
    }

    /// Stale temp files from a killed writer are cleaned up by the next write.
    #[tokio::test]
    async fn stale_temp_files_removed() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = FileStore::new(tmp.path());
        fs::write(tmp.path().join(".work.json.tmp.99999"), "half").expect("write");
        store.save(&token("work")).await.expect("save");
        assert!(!tmp.path().join(".work.json.tmp.99999").exists());
    }
}
