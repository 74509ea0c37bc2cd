//! mailpilot's tables in the state database and their versioned migrations. `mailpilot state init`
//! applies the ones a database lacks, in one transaction under an advisory lock (two hosts running
//! it at once do the work once); every new session checks that the schema is the one this
//! mailpilot knows, so an older binary never writes into a newer layout.

use anyhow::Result;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, GenericClient};

use super::Db;
use crate::error::StateError;

/// One step of the schema: its number, what it adds, and its SQL (unqualified names: the session's
/// `search_path` is the configured schema).
pub struct Migration {
    /// Applied in increasing order; recorded in `schema_migrations`.
    pub version: i32,
    /// What it adds, for `state init` output.
    pub summary: &'static str,
    /// The statements.
    pub sql: &'static str,
}

/// Every migration, oldest first. Never edit a released one: add the next.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        summary: "grants, refresh failures and authorization server metadata",
        sql: "
        CREATE TABLE tokens (
            account    text PRIMARY KEY,
            record     jsonb NOT NULL,
            updated_at timestamptz NOT NULL DEFAULT now()
        );
        CREATE TABLE token_errors (
            account text PRIMARY KEY,
            record  jsonb NOT NULL
        );
        CREATE TABLE auth_metadata (
            issuer text PRIMARY KEY,
            record jsonb NOT NULL
        );
    ",
    },
    Migration {
        version: 2,
        summary: "the outbox",
        sql: "
        CREATE TABLE outbox (
            id       text PRIMARY KEY,
            status   text NOT NULL CHECK (status IN ('queued', 'failed')),
            account  text NOT NULL,
            head     jsonb NOT NULL,
            message  bytea NOT NULL,
            attempts jsonb NOT NULL,
            next_try bigint NOT NULL DEFAULT 0
        );
        CREATE INDEX outbox_claim ON outbox (account, id) WHERE status = 'queued';
    ",
    },
    Migration {
        version: 3,
        summary: "poll checkpoints, job outcomes and send journals",
        sql: "
        CREATE TABLE records (
            kind       text NOT NULL,
            key        text NOT NULL,
            record     jsonb NOT NULL,
            updated_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (kind, key)
        );
        CREATE TABLE journal (
            batch text NOT NULL,
            key   text NOT NULL,
            entry jsonb NOT NULL,
            PRIMARY KEY (batch, key)
        );
    ",
    },
];

/// The schema version this mailpilot reads and writes.
pub fn latest() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// The version recorded in the database; 0 when the schema or its table does not exist. One
/// round trip (every new session asks).
async fn version(db: &Db, client: &impl GenericClient) -> Result<i32> {
    let asked = async {
        match client
            .query_one(
                "SELECT coalesce(max(version), 0) FROM schema_migrations",
                &[],
            )
            .await
        {
            Ok(row) => Ok(row.get(0)),
            Err(e) if e.code() == Some(&SqlState::UNDEFINED_TABLE) => Ok(0),
            Err(e) => Err(e),
        }
    };
    db.timed(asked).await
}

/// Refuses a session whose schema is missing, older or newer than this mailpilot's.
///
/// # Errors
/// [`StateError::Failed`] with the command that fixes it.
pub async fn check(db: &Db, client: &Client) -> Result<()> {
    match mismatch(db, version(db, client).await?) {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

/// Why a schema at version `found` is unusable here, if it is.
fn mismatch(db: &Db, found: i32) -> Option<StateError> {
    let want = latest();
    let (reason, hint) = if found == want {
        return None;
    } else if found == 0 {
        (
            format!("schema {} holds no mailpilot tables", db.schema()),
            "run `mailpilot state init` once to create them",
        )
    } else if found < want {
        (
            format!(
                "schema {} is at version {found}; this mailpilot needs version {want}",
                db.schema()
            ),
            "run `mailpilot state init` to upgrade it (after every host runs this mailpilot)",
        )
    } else {
        (
            format!(
                "schema {} is at version {found}, written by a newer mailpilot (this one knows {want})",
                db.schema()
            ),
            "upgrade mailpilot on this host",
        )
    };
    Some(StateError::Failed {
        target: db.target().to_string(),
        reason,
        hint: Some(hint.into()),
        source: None,
    })
}

/// What `state init` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The version before.
    pub from: i32,
    /// The version now.
    pub to: i32,
    /// The summaries of the migrations applied.
    pub steps: Vec<&'static str>,
}

/// Creates the schema or brings it up to [`latest`], in one transaction.
///
/// # Errors
/// [`StateError`] in the chain; a schema newer than this mailpilot.
pub async fn init(db: &Db) -> Result<Applied> {
    let (mut client, _task) = db.connect().await?;
    let tx = db.timed(client.transaction()).await?;
    let key = super::lock_key(db.schema(), "schema");
    let setup = format!(
        "CREATE SCHEMA IF NOT EXISTS \"{schema}\";
         SET LOCAL search_path TO \"{schema}\";
         CREATE TABLE IF NOT EXISTS schema_migrations (
             version    integer PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now()
         );",
        schema = db.schema()
    );
    db.timed(tx.execute("SELECT pg_advisory_xact_lock($1)", &[&key]))
        .await?;
    db.timed(tx.batch_execute(&setup)).await?;
    let from = version(db, &tx).await?;
    if let Some(newer) = mismatch(db, from).filter(|_| from > latest()) {
        return Err(newer.into());
    }
    let mut steps = Vec::new();
    for migration in MIGRATIONS.iter().filter(|m| m.version > from) {
        db.timed(tx.batch_execute(migration.sql)).await?;
        db.timed(tx.execute(
            "INSERT INTO schema_migrations (version) VALUES ($1)",
            &[&migration.version],
        ))
        .await?;
        steps.push(migration.summary);
    }
    db.timed(tx.commit()).await?;
    Ok(Applied {
        from,
        to: latest().max(from),
        steps,
    })
}
