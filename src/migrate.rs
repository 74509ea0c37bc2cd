//! `mailpilot state migrate`: moves the whole state between the files of this host and the state
//! database, in either direction — grants, poll checkpoints, job outcomes, send journals and the
//! outbox. Running it again changes nothing; nothing newer in the target is replaced by an older
//! copy, and no message ends up in two outboxes (each is stored in the target, then removed from
//! the source). Run it with the daemon and timers stopped.

use anyhow::{Context, Result};

use crate::db::StateHome;
use crate::journal::{self, Journal};
use crate::oauth::backend::{copy_grants, Copied};
use crate::oauth::Store;
use crate::outbox::Outbox;
use crate::schedule::JobState;

/// What a migration did, by part.
#[derive(Debug, Default)]
pub struct Report {
    /// Grants: copied, already there, kept (newer in the target).
    pub grants: Copied,
    /// Poll checkpoints copied (one already in the target is kept).
    pub checkpoints: usize,
    /// Job outcomes copied (a newer one in the target is kept).
    pub jobs: usize,
    /// Journal entries added to the target.
    pub journal_entries: usize,
    /// Messages moved from the source outbox.
    pub messages: usize,
}

/// Moves everything from `from` to `to`.
///
/// # Errors
/// Either side cannot be read or written; a message is being delivered right now (stop the
/// daemon); a lock is held too long.
pub async fn run(from: &StateHome, to: &StateHome) -> Result<Report> {
    Ok(Report {
        grants: copy_grants(&Store::at(from), &Store::at(to)).await?,
        checkpoints: checkpoints(from, to).await?,
        jobs: jobs(from, to).await?,
        journal_entries: journals(from, to).await?,
        messages: messages(from, to).await?,
    })
}

/// Copies the checkpoints the target lacks.
async fn checkpoints(from: &StateHome, to: &StateHome) -> Result<usize> {
    let mut copied = 0;
    for (account, mailbox, json) in crate::poll::all_checkpoints(from).await? {
        if crate::poll::checkpoint_json(to, &account, &mailbox)
            .await?
            .is_none()
        {
            crate::poll::save_checkpoint_json(to, &account, &mailbox, &json).await?;
            copied += 1;
        }
    }
    Ok(copied)
}

/// Copies the job outcomes the target lacks or has older.
async fn jobs(from: &StateHome, to: &StateHome) -> Result<usize> {
    let mut copied = 0;
    for name in crate::schedule::recorded_jobs(from).await? {
        let Some(run) = JobState::new(from, &name).last_run().await? else {
            continue;
        };
        let target = JobState::new(to, &name);
        let newer_there = target
            .last_run()
            .await?
            .is_some_and(|there| there.started >= run.started);
        if !newer_there {
            target.record(&run).await?;
            copied += 1;
        }
    }
    Ok(copied)
}

/// Adds the journal entries the target lacks, batch by batch (under each batch's lock).
async fn journals(from: &StateHome, to: &StateHome) -> Result<usize> {
    let mut batches: Vec<(String, Vec<journal::Entry>)> = Vec::new();
    match from {
        StateHome::Files(dir) => {
            let dir = crate::send::journal_dir(dir);
            for batch in crate::fsutil::names_with_suffix(&dir, ".jsonl")? {
                let entries = journal::entries_in_file(&dir.join(format!("{batch}.jsonl")))?;
                batches.push((batch, entries));
            }
        }
        StateHome::Postgres(db) => {
            for (batch, entry) in journal::entries_in_db(db).await? {
                match batches.last_mut() {
                    Some((last, entries)) if *last == batch => entries.push(entry),
                    _ => batches.push((batch, vec![entry])),
                }
            }
        }
    }
    let mut added = 0;
    for (batch, entries) in batches {
        let mut target = match to {
            StateHome::Files(dir) => {
                let dir = crate::send::journal_dir(dir);
                crate::fsutil::private_dir(&dir)?;
                Journal::open(&dir, &batch)?
            }
            StateHome::Postgres(db) => Journal::open_db(db.clone(), &batch).await?,
        };
        for entry in &entries {
            if !target.contains(&entry.key) {
                target.append(entry)?.wait().await?;
                added += 1;
            }
        }
    }
    Ok(added)
}

/// Moves every message: stored in the target (unless already there from an interrupted run),
/// then removed from the source.
async fn messages(from: &StateHome, to: &StateHome) -> Result<usize> {
    let (source, target) = (Outbox::at(from), Outbox::at(to));
    let mut moved = 0;
    for entry in source.list().await? {
        let (_, message) = source.load(&entry.id).await?;
        target.put_as(&entry, &message).await?;
        source.drop_message(&entry.id).await.with_context(|| {
            format!(
                "message {} is in both outboxes now; stop the daemon and run the migration again",
                entry.id
            )
        })?;
        moved += 1;
    }
    Ok(moved)
}
