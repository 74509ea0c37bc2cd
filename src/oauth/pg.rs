//! The token store on the shared state database: the same records as the token files (sealed
//! under the state key when one is set), one row per account, and the refresh lock as a
//! transaction-scoped advisory lock held in a session of its own — so N processes on any number of
//! hosts make one refresh per expiry, and a killed holder frees the lock as it dies. Every write
//! is committed before it returns.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};

use super::discovery::Metadata;
use super::record;
use super::store::{LastError, TokenStore};
use super::token::StoredToken;
use crate::db::Db;
use crate::seal::Key;

/// Grants in the `tokens`, `token_errors` and `auth_metadata` tables.
#[derive(Debug, Clone)]
pub struct PgStore {
    db: Arc<Db>,
    /// The key tokens are sealed with; `None`: stored in plain (the database's own access control
    /// only).
    key: Option<Arc<Key>>,
}

impl PgStore {
    /// A store in `db`, sealing with `key` when there is one.
    pub fn new(db: Arc<Db>, key: Option<Arc<Key>>) -> Self {
        PgStore { db, key }
    }

    /// The same store, sealing with `key` instead.
    pub fn with_key(mut self, key: Option<Arc<Key>>) -> Self {
        self.key = key;
        self
    }

    /// `grants in the state database host:port/db (schema s)`.
    pub fn describe(&self) -> String {
        format!(
            "grants in the state database {} (schema {})",
            self.db.target(),
            self.db.schema()
        )
    }

    /// The database.
    pub fn db(&self) -> &Arc<Db> {
        &self.db
    }

    fn what(&self, account: &str) -> String {
        format!(
            "the grant of account \"{account}\" in the state database {}",
            self.db.target()
        )
    }

    /// The raw record of `account`, as stored (for migration between backends).
    ///
    /// # Errors
    /// The database is unavailable.
    pub async fn record(&self, account: &str) -> Result<Option<String>> {
        let row = self
            .db
            .query_opt(
                "SELECT record::text FROM tokens WHERE account = $1",
                &[&account],
            )
            .await?;
        Ok(row.map(|r| r.get(0)))
    }

    /// Stores a record as it is (already encoded, maybe sealed), replacing what was there.
    ///
    /// # Errors
    /// The database is unavailable.
    pub async fn put_record(&self, account: &str, record: &str) -> Result<()> {
        self.db
            .execute(
                "INSERT INTO tokens (account, record) VALUES ($1, $2::text::jsonb)
                 ON CONFLICT (account) DO UPDATE SET record = excluded.record, updated_at = now()",
                &[&account, &record],
            )
            .await
            .with_context(|| format!("failed to store {}", self.what(account)))?;
        Ok(())
    }

    /// The accounts with a stored grant.
    ///
    /// # Errors
    /// The database is unavailable.
    pub async fn accounts(&self) -> Result<Vec<String>> {
        let rows = self
            .db
            .query("SELECT account FROM tokens ORDER BY account", &[])
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }
}

impl TokenStore for PgStore {
    type Lock = crate::db::Lock;

    async fn load(&self, account: &str) -> Result<Option<StoredToken>> {
        let Some(text) = self
            .record(account)
            .await
            .with_context(|| format!("failed to read {}", self.what(account)))?
        else {
            return Ok(None);
        };
        record::decode(
            text.as_bytes(),
            &self.what(account),
            account,
            self.key.as_deref(),
        )
        .map(Some)
    }

    async fn save(&self, token: &StoredToken) -> Result<()> {
        let bytes = record::encode(token, self.key.as_deref())?;
        let text = String::from_utf8(bytes).context("a token record is not UTF-8")?;
        self.put_record(&token.account, &text).await
    }

    async fn delete(&self, account: &str) -> Result<bool> {
        self.db
            .execute("DELETE FROM token_errors WHERE account = $1", &[&account])
            .await?;
        let gone = self
            .db
            .execute("DELETE FROM tokens WHERE account = $1", &[&account])
            .await
            .with_context(|| format!("failed to delete {}", self.what(account)))?;
        Ok(gone > 0)
    }

    async fn lock(&self, account: &str, wait: Duration) -> Result<Option<crate::db::Lock>> {
        self.db
            .lock(&format!("token {account}"), wait)
            .await
            .with_context(|| format!("failed to take the token lock of account \"{account}\""))
    }

    async fn last_error(&self, account: &str) -> Result<Option<LastError>> {
        let row = self
            .db
            .query_opt(
                "SELECT record::text FROM token_errors WHERE account = $1",
                &[&account],
            )
            .await?;
        row.map(|r| {
            let text: String = r.get(0);
            serde_json::from_str(&text).with_context(|| {
                format!(
                    "the refresh failure record of account \"{account}\" in {} is corrupt",
                    self.db.target()
                )
            })
        })
        .transpose()
    }

    async fn set_last_error(&self, account: &str, error: Option<&LastError>) -> Result<()> {
        match error {
            None => {
                self.db
                    .execute("DELETE FROM token_errors WHERE account = $1", &[&account])
                    .await?;
            }
            Some(error) => {
                let text = serde_json::to_string(error).context("failed to encode error record")?;
                self.db
                    .execute(
                        "INSERT INTO token_errors (account, record) VALUES ($1, $2::text::jsonb)
                         ON CONFLICT (account) DO UPDATE SET record = excluded.record",
                        &[&account, &text],
                    )
                    .await?;
            }
        }
        Ok(())
    }

    async fn load_metadata(&self, issuer: &str) -> Result<Option<Metadata>> {
        let row = self
            .db
            .query_opt(
                "SELECT record::text FROM auth_metadata WHERE issuer = $1",
                &[&issuer],
            )
            .await?;
        row.map(|r| {
            let text: String = r.get(0);
            serde_json::from_str(&text)
                .with_context(|| format!("the cached metadata of {issuer} is corrupt"))
        })
        .transpose()
    }

    async fn save_metadata(&self, issuer: &str, metadata: &Metadata) -> Result<()> {
        let text = serde_json::to_string(metadata).context("failed to encode metadata")?;
        self.db
            .execute(
                "INSERT INTO auth_metadata (issuer, record) VALUES ($1, $2::text::jsonb)
                 ON CONFLICT (issuer) DO UPDATE SET record = excluded.record",
                &[&issuer, &text],
            )
            .await?;
        Ok(())
    }

    async fn is_sealed(&self, account: &str) -> Result<Option<bool>> {
        let Some(text) = self.record(account).await? else {
            return Ok(None);
        };
        Ok(Some(
            record::version(text.as_bytes(), &self.what(account))? == record::SEALED_VERSION,
        ))
    }
}
