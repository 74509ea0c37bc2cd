//! The shared state database (`[state] backend = "postgres"`): connections with timeouts, the
//! schema and its migrations ([`schema`]), transaction-scoped advisory locks, and what a failure
//! means — an outage is transient (exit 75, nothing changed, never a silent fall back to local
//! files), a refused login needs a person (77), anything else fails (1). Knows nothing of tokens or
//! mail: the stores built on it do.

pub mod schema;
pub mod tls;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use tokio::task::JoinHandle;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row};

use crate::config::Postgres;
use crate::error::StateError;
use crate::secret::Secret;

/// How long a connection attempt (TCP, TLS, login) may take: a database that does not answer in
/// that time is treated as down (exit 75).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long one query may take. State queries touch one row or a few; a query this slow means an
/// overloaded or stuck server, which is transient.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(30);

/// The database of one configuration: how to reach it, and the process's shared session (queries
/// from one process are pipelined on it; locks take their own sessions).
pub struct Db {
    config: tokio_postgres::Config,
    tls: tls::MakeRustls,
    target: String,
    schema: String,
    shared: Mutex<Option<Arc<Client>>>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("target", &self.target)
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

/// Where this process keeps its state: the state directory, or the state database.
#[derive(Debug, Clone)]
pub enum StateHome {
    /// `$XDG_STATE_HOME/mailpilot`.
    Files(std::path::PathBuf),
    /// `[state] backend = "postgres"`.
    Postgres(Arc<Db>),
}

/// What a kind of small record (`records` table) is: poll checkpoints, job outcomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// The checkpoint of one account and mailbox (key `account/mailbox`).
    Poll,
    /// The last run of one job (key: its name).
    Job,
}

impl RecordKind {
    fn name(self) -> &'static str {
        match self {
            RecordKind::Poll => "poll",
            RecordKind::Job => "job",
        }
    }
}

/// A session of its own (for a transaction that must not mix with the shared session's queries).
/// Dropping it closes the connection, which rolls back whatever transaction is open — as does the
/// death of the process.
pub struct Session {
    client: Client,
    task: JoinHandle<()>,
}

impl Session {
    /// The client to run queries on (through [`Db::timed`]).
    pub fn client(&self) -> &Client {
        &self.client
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A held advisory lock: a session in an open transaction. Dropping it closes the session, which
/// ends the transaction and frees the lock.
pub struct Lock {
    session: Session,
}

impl Lock {
    /// Whether the lock is still held: its session is gone when the server restarted or the
    /// connection broke, and with it the lock — a long holder (`watch`) must take it again.
    pub fn is_held(&self) -> bool {
        self.probe().is_held()
    }

    /// Tells later, without owning the lock, whether it is still held: for a writer that works
    /// under a lock someone else holds (a poll's checkpoint under its mailbox lock).
    pub fn probe(&self) -> LockProbe {
        LockProbe(self.session.task.abort_handle())
    }
}

/// Whether a [`Lock`] is still held: its session's connection task ends with the session (a
/// server restart, a broken connection, or the lock released).
#[derive(Debug, Clone)]
pub struct LockProbe(tokio::task::AbortHandle);

impl LockProbe {
    /// `false` once the lock's session is gone.
    pub fn is_held(&self) -> bool {
        !self.0.is_finished()
    }
}

impl std::fmt::Debug for Lock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Lock")
    }
}

impl Db {
    /// The database of `settings`, logging in with `password` if the server asks for one. No
    /// connection is made yet.
    ///
    /// # Errors
    /// The URL does not parse (validation already checked it).
    pub fn new(settings: &Postgres, password: Option<Secret>) -> Result<Db> {
        let mut config: tokio_postgres::Config = settings
            .url
            .parse()
            .context("failed to parse [state] url")?;
        if let Some(password) = password {
            config.password(password.expose());
        }
        // Quoted, so a reserved word (`user`) is a schema name too; validation allows only
        // `[a-z_][a-z0-9_]*`, which needs no escaping inside the quotes.
        let search_path = format!("-c search_path=\"{}\"", settings.schema);
        let options = match config.get_options() {
            Some(given) => format!("{given} {search_path}"),
            None => search_path,
        };
        config
            .options(options)
            .application_name("mailpilot")
            .connect_timeout(CONNECT_TIMEOUT);
        Ok(Db {
            target: target(&config),
            config,
            tls: tls::MakeRustls::new(settings.ca_file.clone()),
            schema: settings.schema.clone(),
            shared: Mutex::new(None),
        })
    }

    /// `host:port/database`, for messages.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// The schema of mailpilot's tables.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// A new session, its connection driven by a task of its own.
    async fn connect(&self) -> Result<(Client, JoinHandle<()>)> {
        let connecting = self.config.connect(self.tls.clone());
        let (client, connection) = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| self.unavailable("the connection timed out"))?
            .map_err(|e| self.error(e))?;
        let task = tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("state database connection ended: {e}");
            }
        });
        Ok((client, task))
    }

    /// The record `key` of `kind` (JSON), if any.
    ///
    /// # Errors
    /// [`StateError`] in the chain.
    pub async fn record(&self, kind: RecordKind, key: &str) -> Result<Option<String>> {
        let row = self
            .query_opt(
                "SELECT record::text FROM records WHERE kind = $1 AND key = $2",
                &[&kind.name(), &key],
            )
            .await?;
        Ok(row.map(|r| r.get(0)))
    }

    /// Every record of `kind`: `(key, json)`, by key.
    ///
    /// # Errors
    /// [`StateError`] in the chain.
    pub async fn records_of(&self, kind: RecordKind) -> Result<Vec<(String, String)>> {
        let rows = self
            .query(
                "SELECT key, record::text FROM records WHERE kind = $1 ORDER BY key",
                &[&kind.name()],
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Replaces the record `key` of `kind` with `json` (committed when this returns).
    ///
    /// # Errors
    /// [`StateError`] in the chain.
    pub async fn put_record(&self, kind: RecordKind, key: &str, json: &str) -> Result<()> {
        self.execute(
            "INSERT INTO records (kind, key, record) VALUES ($1, $2, $3::text::jsonb)
             ON CONFLICT (kind, key) DO UPDATE SET record = excluded.record, updated_at = now()",
            &[&kind.name(), &key, &json],
        )
        .await?;
        Ok(())
    }

    /// A session of its own, checked to hold the schema this mailpilot knows.
    ///
    /// # Errors
    /// [`StateError`] in the chain.
    pub async fn session(&self) -> Result<Session> {
        let (client, task) = self.connect().await?;
        let session = Session { client, task };
        schema::check(self, &session.client).await?;
        Ok(session)
    }

    /// The process's shared session, (re)connecting when there is none or it was lost; a new one
    /// is checked to hold the schema this mailpilot knows.
    async fn client(&self) -> Result<Arc<Client>> {
        if let Some(client) = self.cached() {
            return Ok(client);
        }
        let (client, _task) = self.connect().await?;
        schema::check(self, &client).await?;
        let client = Arc::new(client);
        if let Ok(mut shared) = self.shared.lock() {
            *shared = Some(client.clone());
        }
        Ok(client)
    }

    fn cached(&self) -> Option<Arc<Client>> {
        let shared = self.shared.lock().ok()?;
        shared.as_ref().filter(|c| !c.is_closed()).cloned()
    }

    /// The rows of `sql`.
    ///
    /// # Errors
    /// [`StateError`] in the chain.
    pub async fn query(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>> {
        let client = self.client().await?;
        self.timed(client.query(sql, params)).await
    }

    /// The one row of `sql`, if any.
    ///
    /// # Errors
    /// [`StateError`] in the chain; more than one row.
    pub async fn query_opt(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>> {
        let client = self.client().await?;
        self.timed(client.query_opt(sql, params)).await
    }

    /// Runs `sql`; the number of rows it changed.
    ///
    /// # Errors
    /// [`StateError`] in the chain.
    pub async fn execute(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64> {
        let client = self.client().await?;
        self.timed(client.execute(sql, params)).await
    }

    /// Runs `work` with [`QUERY_TIMEOUT`], mapping its failure to a [`StateError`].
    ///
    /// # Errors
    /// [`StateError`] in the chain.
    pub async fn timed<T>(
        &self,
        work: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T> {
        match tokio::time::timeout(QUERY_TIMEOUT, work).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(self.error(e)),
            Err(_) => {
                // The session may be stuck: start a fresh one next time.
                if let Ok(mut shared) = self.shared.lock() {
                    *shared = None;
                }
                Err(self.unavailable("a query timed out"))
            }
        }
    }

    /// Takes the transaction-scoped advisory lock `name`, waiting up to `wait` for its holder (the
    /// server wakes the waiter the moment it is freed); `None` when the wait ran out.
    ///
    /// # Errors
    /// [`StateError`] in the chain.
    pub async fn lock(&self, name: &str, wait: Duration) -> Result<Option<Lock>> {
        let (client, task) = self.connect().await?;
        let session = Session { client, task };
        let millis = wait.as_millis().clamp(1, i32::MAX as u128);
        let begin = format!("BEGIN; SET LOCAL lock_timeout = {millis}");
        self.timed(session.client.batch_execute(&begin)).await?;
        let key = lock_key(&self.schema, name);
        let params: [&(dyn ToSql + Sync); 1] = [&key];
        let taking = session
            .client
            .execute("SELECT pg_advisory_xact_lock($1)", &params);
        match tokio::time::timeout(wait + QUERY_TIMEOUT, taking).await {
            Ok(Ok(_)) => Ok(Some(Lock { session })),
            Ok(Err(e)) if e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) => Ok(None),
            Ok(Err(e)) => Err(self.error(e)),
            Err(_) => Err(self.unavailable("taking a lock timed out")),
        }
    }

    fn unavailable(&self, why: &str) -> anyhow::Error {
        StateError::Unavailable {
            target: self.target.clone(),
            source: Some(why.into()),
        }
        .into()
    }

    /// What a driver error means for the caller.
    pub fn error(&self, e: tokio_postgres::Error) -> anyhow::Error {
        let target = self.target.clone();
        let kind = match e.code() {
            Some(code) if login_refused(code) => Kind::LoginRefused,
            Some(code) if transient(code) => Kind::Unavailable,
            Some(code)
                if code == &SqlState::UNDEFINED_TABLE || code == &SqlState::INVALID_SCHEMA_NAME =>
            {
                Kind::Failed(
                    format!("mailpilot's tables are missing from schema {}", self.schema),
                    Some("run `mailpilot state init` to create them".into()),
                )
            }
            Some(_) => Kind::Failed("a query failed".into(), None),
            None => without_code(&e),
        };
        let source = Some(Box::new(e) as crate::error::BoxError);
        match kind {
            Kind::Unavailable => StateError::Unavailable { target, source },
            Kind::LoginRefused => StateError::LoginRefused { target, source },
            Kind::Failed(reason, hint) => StateError::Failed {
                target,
                reason,
                hint,
                source,
            },
        }
        .into()
    }
}

/// What a driver error means, before it is wrapped.
enum Kind {
    Unavailable,
    LoginRefused,
    /// The reason and the hint.
    Failed(String, Option<String>),
}

/// A failure the server did not give a code for: the network, TLS, the login exchange, or a value
/// that did not convert.
fn without_code(e: &tokio_postgres::Error) -> Kind {
    if let Some(problem) = crate::trust::certificate_problem(e) {
        return Kind::Failed(
            format!("its TLS certificate is not trusted ({problem})"),
            Some("set [state] ca_file to the CA that signed it, or add `sslmode=disable` to the url for a server on this host".into()),
        );
    }
    let text = e.to_string();
    // "invalid configuration" at run time is a login the settings cannot make: the server asked
    // for a password and none is configured.
    if text.starts_with("authentication error") || text.starts_with("invalid configuration") {
        Kind::LoginRefused
    } else if text.starts_with("error serializing")
        || text.starts_with("error deserializing")
        || text.starts_with("invalid")
        || text.starts_with("query returned")
    {
        Kind::Failed("a value did not convert".into(), None)
    } else {
        Kind::Unavailable
    }
}

/// Refused credentials (SQLSTATE class 28).
fn login_refused(code: &SqlState) -> bool {
    code.code().starts_with("28")
}

/// Connection trouble (08), too many connections or out of memory (53), a shutting-down or
/// starting server (57P), a lost serialization race or deadlock (40), a lock wait that ran out
/// (55P03): a retry may succeed.
fn transient(code: &SqlState) -> bool {
    let code = code.code();
    ["08", "53", "57P", "40", "55P03"]
        .iter()
        .any(|class| code.starts_with(class))
}

/// The 64-bit advisory lock key of `name` in `schema` (so two schemas in one database do not share
/// locks).
fn lock_key(schema: &str, name: &str) -> i64 {
    let digest = Sha256::digest(format!("mailpilot {schema} {name}").as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(first)
}

/// `host:port/database` of `config`.
fn target(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
        Some(tokio_postgres::config::Host::Unix(dir)) => dir.display().to_string(),
        None => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config
        .get_dbname()
        .or(config.get_user())
        .unwrap_or("postgres");
    format!("{host}:{port}/{db}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lock keys differ by schema and name and are stable.
    #[test]
    fn lock_keys() {
        assert_eq!(lock_key("a", "token work"), lock_key("a", "token work"));
        assert_ne!(lock_key("a", "token work"), lock_key("b", "token work"));
        assert_ne!(lock_key("a", "token work"), lock_key("a", "token home"));
    }

    /// Outages are transient; refused logins are not.
    #[test]
    fn codes() {
        assert!(transient(&SqlState::ADMIN_SHUTDOWN));
        assert!(transient(&SqlState::CONNECTION_FAILURE));
        assert!(transient(&SqlState::TOO_MANY_CONNECTIONS));
        assert!(transient(&SqlState::T_R_SERIALIZATION_FAILURE));
        assert!(!transient(&SqlState::UNDEFINED_TABLE));
        assert!(login_refused(&SqlState::INVALID_PASSWORD));
        assert!(!login_refused(&SqlState::ADMIN_SHUTDOWN));
    }

    /// The target names host, port and database, never a password.
    #[test]
    fn target_text() {
        let config: tokio_postgres::Config =
            "postgresql://u@db.example:6543/state".parse().expect("url");
        assert_eq!(target(&config), "db.example:6543/state");
    }
}
