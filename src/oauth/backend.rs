//! The configured token store as one type, so commands, SMTP, IMAP and the daemon never branch on
//! the backend.

use std::time::Duration;

use anyhow::Result;

use super::discovery::Metadata;
use super::pg::PgStore;
use super::store::{FileLock, FileStore, LastError, TokenStore};
use super::token::StoredToken;

/// Files on this host, or the shared database.
#[derive(Debug, Clone)]
pub enum Store {
    /// `$XDG_STATE_HOME/mailpilot/tokens`.
    Files(FileStore),
    /// `[state] backend = "postgres"`.
    Postgres(PgStore),
}

/// A held refresh lock of either backend.
#[derive(Debug)]
pub enum StoreLock {
    /// A lock file.
    Files(FileLock),
    /// An advisory lock in its own database session.
    Postgres(crate::db::Lock),
}

impl Store {
    /// The grants of `home`, unsealed (see [`Store::with_key`]): token files in its `tokens/`, or
    /// the database's tables.
    pub fn at(home: &crate::db::StateHome) -> Store {
        match home {
            crate::db::StateHome::Files(dir) => Store::Files(FileStore::new(dir.join("tokens"))),
            crate::db::StateHome::Postgres(db) => Store::Postgres(PgStore::new(db.clone(), None)),
        }
    }

    /// Where the grants are, for messages (`token files in /path`, `grants in the state database
    /// host:port/db (schema s)`).
    pub fn describe(&self) -> String {
        match self {
            Store::Files(files) => format!("token files in {}", files.dir().display()),
            Store::Postgres(pg) => pg.describe(),
        }
    }

    /// Where `account`'s grant is, for messages.
    pub fn place(&self, account: &str) -> String {
        match self {
            Store::Files(files) => files.token_path(account).display().to_string(),
            Store::Postgres(pg) => format!("the state database {}", pg.db().target()),
        }
    }

    /// The raw record of `account` as stored (sealed ones stay sealed).
    ///
    /// # Errors
    /// The store cannot be read.
    pub async fn record(&self, account: &str) -> Result<Option<String>> {
        match self {
            Store::Files(s) => s.record(account),
            Store::Postgres(s) => s.record(account).await,
        }
    }

    /// Stores a raw record as it is.
    ///
    /// # Errors
    /// The store cannot be written.
    pub async fn put_record(&self, account: &str, record: &str) -> Result<()> {
        match self {
            Store::Files(s) => s.put_record(account, record),
            Store::Postgres(s) => s.put_record(account, record).await,
        }
    }

    /// The accounts with a stored grant.
    ///
    /// # Errors
    /// The store cannot be read.
    pub async fn accounts(&self) -> Result<Vec<String>> {
        match self {
            Store::Files(s) => s.accounts(),
            Store::Postgres(s) => s.accounts().await,
        }
    }

    /// The same store, sealing with `key` instead (`None`: plain).
    pub fn with_key(self, key: Option<std::sync::Arc<crate::seal::Key>>) -> Store {
        match self {
            Store::Files(files) => Store::Files(files.with_key(key)),
            Store::Postgres(pg) => Store::Postgres(pg.with_key(key)),
        }
    }
}

impl TokenStore for Store {
    type Lock = StoreLock;

    async fn load(&self, account: &str) -> Result<Option<StoredToken>> {
        match self {
            Store::Files(s) => s.load(account).await,
            Store::Postgres(s) => s.load(account).await,
        }
    }

    async fn save(&self, token: &StoredToken) -> Result<()> {
        match self {
            Store::Files(s) => s.save(token).await,
            Store::Postgres(s) => s.save(token).await,
        }
    }

    async fn delete(&self, account: &str) -> Result<bool> {
        match self {
            Store::Files(s) => s.delete(account).await,
            Store::Postgres(s) => s.delete(account).await,
        }
    }

    async fn lock(&self, account: &str, wait: Duration) -> Result<Option<StoreLock>> {
        Ok(match self {
            Store::Files(s) => s.lock(account, wait).await?.map(StoreLock::Files),
            Store::Postgres(s) => s.lock(account, wait).await?.map(StoreLock::Postgres),
        })
    }

    async fn last_error(&self, account: &str) -> Result<Option<LastError>> {
        match self {
            Store::Files(s) => s.last_error(account).await,
            Store::Postgres(s) => s.last_error(account).await,
        }
    }

    async fn set_last_error(&self, account: &str, error: Option<&LastError>) -> Result<()> {
        match self {
            Store::Files(s) => s.set_last_error(account, error).await,
            Store::Postgres(s) => s.set_last_error(account, error).await,
        }
    }

    async fn load_metadata(&self, issuer: &str) -> Result<Option<Metadata>> {
        match self {
            Store::Files(s) => s.load_metadata(issuer).await,
            Store::Postgres(s) => s.load_metadata(issuer).await,
        }
    }

    async fn save_metadata(&self, issuer: &str, metadata: &Metadata) -> Result<()> {
        match self {
            Store::Files(s) => s.save_metadata(issuer, metadata).await,
            Store::Postgres(s) => s.save_metadata(issuer, metadata).await,
        }
    }

    async fn is_sealed(&self, account: &str) -> Result<Option<bool>> {
        match self {
            Store::Files(s) => s.is_sealed(account).await,
            Store::Postgres(s) => s.is_sealed(account).await,
        }
    }
}

/// What [`copy_grants`] did, by account.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Copied {
    /// Copied (missing or older in the target).
    pub copied: Vec<String>,
    /// Already the same in both.
    pub same: Vec<String>,
    /// Kept, since the target's grant differs and is at least as new (a refresh happened there
    /// since).
    pub kept: Vec<String>,
}

/// How long a copy waits for a refresh in progress on one account.
const COPY_LOCK_WAIT: Duration = Duration::from_secs(30);

/// Copies every grant of `from` into `to` as stored (sealed records stay sealed, so no key is
/// needed), each under the refresh locks of both stores so no refresh runs in between. Idempotent:
/// a grant already there is left alone, and a different one in `to` is replaced only by a strictly
/// newer copy (`refreshed_at`), since an older one would bring back a refresh token the provider
/// may already have rotated away.
///
/// # Errors
/// Either store fails, a lock is held too long, or a record is not JSON.
pub async fn copy_grants(from: &Store, to: &Store) -> Result<Copied> {
    let mut done = Copied::default();
    for account in from.accounts().await? {
        let _source = super::source::wait_for_lock(from, &account, COPY_LOCK_WAIT).await?;
        let _target = super::source::wait_for_lock(to, &account, COPY_LOCK_WAIT).await?;
        let Some(record) = from.record(&account).await? else {
            continue;
        };
        let incoming = freshness(&record, &account)?;
        match to.record(&account).await? {
            Some(there) if same_record(&there, &record) => done.same.push(account),
            Some(there) if freshness(&there, &account)?.0 >= incoming.0 => done.kept.push(account),
            _ => {
                to.put_record(&account, &record).await?;
                done.copied.push(account);
            }
        }
    }
    Ok(done)
}

/// A record as JSON with its `(refreshed_at, obtained_at)`.
fn freshness(record: &str, account: &str) -> Result<((u64, u64), serde_json::Value)> {
    use anyhow::Context;
    let value: serde_json::Value = serde_json::from_str(record)
        .with_context(|| format!("the stored grant of account \"{account}\" is not JSON"))?;
    let at = |field: &str| {
        value
            .get(field)
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0)
    };
    Ok(((at("refreshed_at"), at("obtained_at")), value))
}

/// Whether two records hold the same grant (whatever their JSON layout).
fn same_record(a: &str, b: &str) -> bool {
    let parse = |t: &str| serde_json::from_str::<serde_json::Value>(t).ok();
    matches!((parse(a), parse(b)), (Some(x), Some(y)) if x == y)
}
