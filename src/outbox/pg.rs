//! The outbox in the state database (`[state] backend = "postgres"`): one row per message. Any
//! number of daemons, relays and `sendmail`s on any number of hosts share it: a message is claimed
//! with `SELECT … FOR UPDATE SKIP LOCKED` in a session of the deliverer's own, and the row lock is
//! held until the server's answer is recorded (deleted after a 250, deferred or failed otherwise)
//! in the same transaction. A deliverer that dies releases its claim with its session; the
//! message then goes to another. A message is accepted (exit 0, SMTP 250) once its INSERT is
//! committed.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{bail, Context, Result};

use super::{Attempts, Drain, Head, Queued, Status, MAX_MESSAGE_BYTES};
use crate::config::Account;
use crate::db::{Db, Session};

/// The `outbox` table of the state database.
#[derive(Debug, Clone)]
pub struct PgOutbox {
    db: Arc<Db>,
}

/// A claimed message: its row stays locked (the transaction open) until it is settled.
pub(super) struct Claim {
    id: String,
}

/// What the next claim found.
pub(super) enum Next {
    /// A message, claimed.
    Taken(super::Taken<Claim>),
    /// A message passed over (not due, not this account's, or failed for good): its id.
    Passed(String),
    /// Nothing (more) to deliver.
    End,
}

fn json<T: serde::Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).context("failed to encode an outbox record")
}

impl PgOutbox {
    /// The outbox of `db`.
    pub fn new(db: Arc<Db>) -> PgOutbox {
        PgOutbox { db }
    }

    /// `the state database host:port/db`.
    pub fn describe(&self) -> String {
        format!("the state database {}", self.db.target())
    }

    /// Puts a message in the outbox; when this returns, it is committed.
    ///
    /// # Errors
    /// The database is unavailable.
    pub async fn put(&self, head: &Head, message: &[u8], failed: Option<&str>) -> Result<String> {
        let id = crate::clock::unique_stamp();
        let (status, attempts) = match failed {
            None => (Status::Queued.name(), Attempts::default()),
            Some(reason) => (
                Status::Failed.name(),
                super::failed(&Attempts::default(), reason),
            ),
        };
        self.db
            .execute(
                "INSERT INTO outbox (id, status, account, head, message, attempts)
                 VALUES ($1, $2, $3, $4::text::jsonb, $5, $6::text::jsonb)",
                &[
                    &id,
                    &status,
                    &head.account,
                    &json(head)?,
                    &message,
                    &json(&attempts)?,
                ],
            )
            .await
            .with_context(|| format!("failed to queue the message in {}", self.describe()))?;
        Ok(id)
    }

    /// Stores `entry` (from another outbox) under its id; `false` when that id is already here.
    ///
    /// # Errors
    /// The database is unavailable.
    pub async fn put_as(&self, entry: &Queued, message: &[u8]) -> Result<bool> {
        let status = entry.status.name();
        let next = i64::try_from(entry.attempts.next_try).unwrap_or(i64::MAX);
        let added = self
            .db
            .execute(
                "INSERT INTO outbox (id, status, account, head, message, attempts, next_try)
                 VALUES ($1, $2, $3, $4::text::jsonb, $5, $6::text::jsonb, $7)
                 ON CONFLICT (id) DO NOTHING",
                &[
                    &entry.id,
                    &status,
                    &entry.head.account,
                    &json(&entry.head)?,
                    &message,
                    &json(&entry.attempts)?,
                    &next,
                ],
            )
            .await?;
        Ok(added == 1)
    }

    /// Every message, queued first then failed, oldest first.
    ///
    /// # Errors
    /// The database is unavailable.
    pub async fn list(&self) -> Result<Vec<Queued>> {
        let rows = self
            .db
            .query(
                "SELECT id, status, head::text, octet_length(message)::bigint, attempts::text
                 FROM outbox ORDER BY status = 'failed', id",
                &[],
            )
            .await?;
        let mut all = Vec::new();
        for row in rows {
            let id: String = row.get(0);
            let Some(status) = Status::from_name(row.get(1)) else {
                continue;
            };
            let Ok(head) = serde_json::from_str::<Head>(row.get(2)) else {
                continue;
            };
            let size: i64 = row.get(3);
            let attempts = serde_json::from_str(row.get(4)).unwrap_or_default();
            all.push(Queued {
                id,
                status,
                head,
                size: u64::try_from(size).unwrap_or(0),
                attempts,
            });
        }
        Ok(all)
    }

    /// The message `id` with its head.
    ///
    /// # Errors
    /// No such message, or the database is unavailable.
    pub async fn load(&self, id: &str) -> Result<(Head, Vec<u8>)> {
        let row = self
            .db
            .query_opt(
                "SELECT head::text, message FROM outbox WHERE id = $1",
                &[&id],
            )
            .await?;
        let Some(row) = row else {
            bail!(
                "no message {} in {}",
                crate::error::clean(id, 80),
                self.describe()
            );
        };
        let head = serde_json::from_str(row.get(0))
            .with_context(|| format!("message {id} has an unreadable head"))?;
        Ok((head, row.get(1)))
    }

    /// Queues the failed message `id` again (attempts start over).
    ///
    /// # Errors
    /// It is not a failed message, or the database is unavailable.
    pub async fn retry(&self, id: &str, now: u64) -> Result<()> {
        let fresh = Attempts {
            retried_at: Some(now),
            ..Attempts::default()
        };
        let changed = self
            .db
            .execute(
                "UPDATE outbox SET status = 'queued', attempts = $2::text::jsonb, next_try = 0
                 WHERE id = $1 AND status = 'failed'",
                &[&id, &json(&fresh)?],
            )
            .await?;
        if changed == 0 {
            bail!(
                "no failed message {} (see `mailpilot queue list`)",
                crate::error::clean(id, 80)
            );
        }
        Ok(())
    }

    /// Deletes message `id`, unless a deliverer holds it right now.
    ///
    /// # Errors
    /// No such message, it is being delivered, or the database is unavailable.
    pub async fn drop_message(&self, id: &str) -> Result<()> {
        let gone = self
            .db
            .execute(
                "WITH victim AS (SELECT id FROM outbox WHERE id = $1 FOR UPDATE SKIP LOCKED)
                 DELETE FROM outbox o USING victim v WHERE o.id = v.id",
                &[&id],
            )
            .await?;
        if gone == 0 {
            let there = self
                .db
                .query_opt("SELECT 1 FROM outbox WHERE id = $1", &[&id])
                .await?;
            match there {
                Some(_) => bail!("message {id} is being delivered right now"),
                None => bail!(
                    "no message {} in {}",
                    crate::error::clean(id, 80),
                    self.describe()
                ),
            }
        }
        Ok(())
    }

    /// The queued messages due now (all with `drain.force`), by account, oldest first.
    ///
    /// # Errors
    /// The database is unavailable.
    pub async fn due_by_account(&self, drain: Drain) -> Result<BTreeMap<String, Vec<String>>> {
        let now = i64::try_from(drain.now).unwrap_or(i64::MAX);
        let rows = self
            .db
            .query(
                "SELECT account, id FROM outbox
                 WHERE status = 'queued' AND ($1 OR next_try <= $2) ORDER BY id",
                &[&drain.force, &now],
            )
            .await?;
        let mut due: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for row in rows {
            due.entry(row.get(0)).or_default().push(row.get(1));
        }
        Ok(due)
    }

    /// A session for claiming messages one after another.
    ///
    /// # Errors
    /// The database is unavailable.
    pub(super) async fn claimer(&self) -> Result<Session> {
        self.db.session().await
    }

    /// Claims message `id` if it is queued, `account`'s, due, and no one else holds it; a message
    /// past `max_age` or unreadable is failed instead (committed at once).
    ///
    /// # Errors
    /// The database is unavailable.
    pub(super) async fn claim(
        &self,
        session: &Session,
        id: &str,
        account: &Account,
        drain: &Drain,
    ) -> Result<Option<super::Taken<Claim>>> {
        let next = self
            .claim_where(
                session,
                "id = $1 AND status = 'queued'",
                &[&id],
                account,
                drain,
            )
            .await?;
        match next {
            Next::Taken(taken) => Ok(Some(taken)),
            Next::Passed(_) | Next::End => Ok(None),
        }
    }

    /// Claims the oldest message of `account` after id `after` that is due (any queued one with
    /// `drain.force`) and that no one else holds: deliverers never wait for each other, nor walk
    /// past each other's messages.
    ///
    /// # Errors
    /// The database is unavailable.
    pub(super) async fn claim_next(
        &self,
        session: &Session,
        after: &str,
        account: &Account,
        drain: &Drain,
    ) -> Result<Next> {
        let now = i64::try_from(drain.now).unwrap_or(i64::MAX);
        self.claim_where(
            session,
            "status = 'queued' AND account = $1 AND ($2 OR next_try <= $3) AND id > $4
             ORDER BY id LIMIT 1",
            &[&account.name, &drain.force, &now, &after],
            account,
            drain,
        )
        .await
    }

    /// Opens a transaction on `session` and locks the first row `filter` (a `WHERE` clause, with
    /// any `ORDER BY … LIMIT`) selects that no one else holds; [`Self::take`] decides on it.
    async fn claim_where(
        &self,
        session: &Session,
        filter: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
        account: &Account,
        drain: &Drain,
    ) -> Result<Next> {
        let sql = format!(
            "SELECT id, head::text, message, attempts::text, account FROM outbox
             WHERE {filter} FOR UPDATE SKIP LOCKED"
        );
        self.db
            .timed(session.client().batch_execute("BEGIN"))
            .await?;
        let row = self
            .db
            .timed(session.client().query_opt(&sql, params))
            .await?;
        self.take(session, row, account, drain).await
    }

    /// The row locked by the open transaction, if it is deliverable now; otherwise the
    /// transaction ends (a message past `max_age` or unreadable is failed and committed).
    async fn take(
        &self,
        session: &Session,
        row: Option<tokio_postgres::Row>,
        account: &Account,
        drain: &Drain,
    ) -> Result<Next> {
        let Some(row) = row else {
            self.end(session, "ROLLBACK").await?;
            return Ok(Next::End);
        };
        let id: String = row.get(0);
        let state: Attempts = serde_json::from_str(row.get(3)).unwrap_or_default();
        if row.get::<_, &str>(4) != account.name || (!drain.force && state.next_try > drain.now) {
            self.end(session, "ROLLBACK").await?;
            return Ok(Next::Passed(id));
        }
        let claim = Claim { id: id.clone() };
        let message: Vec<u8> = row.get(2);
        let head = match serde_json::from_str::<Head>(row.get(1)) {
            Ok(head) if message.len() as u64 <= MAX_MESSAGE_BYTES => head,
            _ => {
                let reason = "unreadable: the head or size is wrong";
                self.fail(session, claim, &state, reason).await?;
                return Ok(Next::Passed(id));
            }
        };
        if let Some(reason) = super::expired(&head, &state, drain) {
            self.fail(session, claim, &state, &reason).await?;
            return Ok(Next::Passed(id));
        }
        Ok(Next::Taken(super::Taken {
            id,
            claim,
            head,
            message,
            state,
        }))
    }

    async fn end(&self, session: &Session, how: &str) -> Result<()> {
        self.db.timed(session.client().batch_execute(how)).await
    }

    /// The server took it: delete and commit.
    pub(super) async fn sent(&self, session: &Session, claim: Claim) -> Result<()> {
        let sql = "DELETE FROM outbox WHERE id = $1";
        self.settle(session, sql, &[&claim.id]).await
    }

    /// Runs `sql` on the claimed row in its open transaction, and commits.
    async fn settle(
        &self,
        session: &Session,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<()> {
        self.db.timed(session.client().execute(sql, params)).await?;
        self.end(session, "COMMIT").await
    }

    /// A failed attempt: record it with the next try, and commit.
    pub(super) async fn defer(
        &self,
        session: &Session,
        claim: Claim,
        state: Attempts,
        reason: &str,
        now: u64,
    ) -> Result<()> {
        let state = super::deferred(state, reason, now);
        let next = i64::try_from(state.next_try).unwrap_or(i64::MAX);
        let sql = "UPDATE outbox SET attempts = $2::text::jsonb, next_try = $3 WHERE id = $1";
        self.settle(session, sql, &[&claim.id, &json(&state)?, &next])
            .await
    }

    /// Refused for good: mark it failed with the reason, and commit.
    pub(super) async fn fail(
        &self,
        session: &Session,
        claim: Claim,
        state: &Attempts,
        reason: &str,
    ) -> Result<()> {
        let record = super::failed(state, reason);
        let sql = "UPDATE outbox SET status = 'failed', attempts = $2::text::jsonb WHERE id = $1";
        self.settle(session, sql, &[&claim.id, &json(&record)?])
            .await
    }
}
