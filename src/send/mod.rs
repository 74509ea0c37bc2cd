//! Mail merge: one templated message per data row, validated up front, sent over one SMTP
//! connection, each accepted message journaled before the next, so a rerun never sends twice.
//!
//! The message key of a row is its `id` (if it has one) or a hash of template, recipients and
//! data; the Message-ID is derived from it, so the one message that can repeat after a crash (the
//! server said 250, the process died before the journal write) carries the same Message-ID twice
//! and receivers can tell.
//!
//! `batch` sends the checked rows over one session.

mod batch;

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use lettre::Message;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::compose::data::{list, row_label, Row};
use crate::compose::template::Templates;
use crate::compose::Draft;
use crate::journal::KeyDigest;

/// One row rendered and checked, as its draft: built into a message just before it is sent, so
/// its `Date:` is when it was sent (not when the batch started, half an hour earlier with
/// `--rate`).
#[derive(Debug)]
pub struct Prepared {
    /// `rows.csv:7`.
    pub label: String,
    /// The stable message key.
    pub key: String,
    /// The rendered message (its Message-ID derived from the key for a batch).
    pub draft: Draft,
}

impl Prepared {
    /// The message, dated now.
    ///
    /// # Errors
    /// An attachment can no longer be read.
    pub fn build(&self) -> Result<Message> {
        self.draft.build()
    }
}

/// A row that cannot become a message, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// `rows.csv:7`.
    pub label: String,
    /// What is wrong.
    pub problem: String,
}

/// What every message of a merge shares.
#[derive(Debug, Clone)]
pub struct Merge<'a> {
    /// Template name.
    pub template: &'a str,
    /// Variables for every row (`--var`, `--data`); a row's own values win.
    pub globals: &'a Map<String, Value>,
    /// From, fixed recipients, attachments and headers for every message.
    pub base: &'a Draft,
    /// The data file (rows' attachment paths are relative to its directory).
    pub data_file: &'a Path,
    /// The directory rows may attach files from (`--attachments-from`), instead of the data
    /// file's; relative paths are resolved against it.
    pub attachments_from: Option<&'a Path>,
    /// The batch name (part of every Message-ID); `None` for a one-off templated message, which
    /// gets a fresh random Message-ID (its content may repeat day after day).
    pub batch: Option<&'a str>,
}

/// What the first pass over a merge's rows found: every invalid row (so all problems are shown
/// before anything is sent), the count, and which rows the sending pass must skip. Only message
/// keys' digests are kept, so 100,000 rows cost a few megabytes, not their messages.
#[derive(Debug, Default)]
pub struct Checked {
    /// Rows read.
    pub rows: usize,
    /// Rows that became a message.
    pub valid: usize,
    /// Rows that did not, and why.
    pub invalid: Vec<Invalid>,
    skip: HashSet<usize>,
}

/// Renders and builds every row once to check it, collecting every problem instead of stopping at
/// the first; nothing is kept but the verdicts.
///
/// # Errors
/// The data file itself is malformed (a row that cannot be read at all).
pub fn check(
    templates: &Templates,
    merge: &Merge<'_>,
    rows: impl Iterator<Item = Result<Row>>,
) -> Result<Checked> {
    let mut checked = Checked::default();
    let mut seen: HashMap<KeyDigest, usize> = HashMap::new();
    for row in rows {
        let row = row?;
        checked.rows += 1;
        let label = row_label(merge.data_file, row.number);
        let problem = match prepare_row(templates, merge, &row) {
            Ok((key, _)) => match seen.entry(KeyDigest::of(&key)) {
                Entry::Occupied(first) => format!(
                    "same message key `{key}` as {} (give each row a distinct `id`)",
                    row_label(merge.data_file, *first.get())
                ),
                Entry::Vacant(slot) => {
                    slot.insert(row.number);
                    checked.valid += 1;
                    continue;
                }
            },
            Err(e) => crate::error::error_text(e.as_ref()),
        };
        checked.skip.insert(row.number);
        checked.invalid.push(Invalid { label, problem });
    }
    Ok(checked)
}

/// One row as a message, rendered and checked.
///
/// # Errors
/// The row cannot become a message (the error says why).
pub fn prepare(templates: &Templates, merge: &Merge<'_>, row: &Row) -> Result<Prepared> {
    let (key, draft) = prepare_row(templates, merge, row)?;
    Ok(Prepared {
        label: row_label(merge.data_file, row.number),
        key,
        draft,
    })
}

/// The valid rows as messages, each rendered when it is asked for: the sending pass after
/// [`check`], holding one message at a time.
pub fn messages<'a>(
    templates: &'a Templates,
    merge: &'a Merge<'a>,
    rows: impl Iterator<Item = Result<Row>> + 'a,
    checked: &'a Checked,
) -> impl Iterator<Item = Result<Prepared>> + 'a {
    rows.filter(|row| !matches!(row, Ok(r) if checked.skip.contains(&r.number)))
        .map(|row| {
            let row = row?;
            prepare(templates, merge, &row).with_context(|| {
                format!(
                    "{}: the row no longer makes a message (did the data file or an attachment change?)",
                    row_label(merge.data_file, row.number)
                )
            })
        })
}

fn prepare_row(templates: &Templates, merge: &Merge<'_>, row: &Row) -> Result<(String, Draft)> {
    let mut vars = merge.globals.clone();
    vars.extend(row.vars.clone());
    let vars = Value::Object(vars);
    let rendered = templates.render(merge.template, &vars)?;
    let field = |k: &str| list(vars.get(k), k).map_err(anyhow::Error::msg);
    let attachments_dir =
        merge
            .attachments_from
            .unwrap_or_else(|| match merge.data_file.parent() {
                Some(dir) if !dir.as_os_str().is_empty() => dir,
                _ => Path::new("."),
            });
    let mut draft = merge.base.clone();
    draft.to.extend(field("to")?);
    draft.cc.extend(field("cc")?);
    draft.bcc.extend(field("bcc")?);
    for a in field("attachments")? {
        draft.attachments.push(row_attachment(attachments_dir, &a)?);
    }
    draft.subject = rendered.subject;
    draft.text = Some(rendered.text);
    draft.html = rendered.html;
    let key = message_key(merge.template, &vars, &draft)?;
    if let Some(batch) = merge.batch {
        let domain = draft
            .from
            .rsplit_once('@')
            .map_or("mailpilot.invalid", |(_, d)| d.trim_end_matches('>'));
        draft.message_id = Some(format!("<{key}.{batch}@{domain}>"));
    }
    // Checked (addresses, headers, attachments); built when it is sent.
    draft.check()?;
    Ok((key, draft))
}

/// A row's attachment `name`, resolved against `dir`: it must be a file under `dir` (after
/// following links), so a data file cannot make mailpilot send `/etc/shadow` or `../../key`.
fn row_attachment(dir: &Path, name: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    if !path.is_file() {
        anyhow::bail!("attachment {} not found", path.display());
    }
    let root = dir
        .canonicalize()
        .with_context(|| format!("failed to resolve {}", dir.display()))?;
    let real = path
        .canonicalize()
        .with_context(|| format!("failed to resolve {}", path.display()))?;
    if !real.starts_with(&root) {
        anyhow::bail!(
            "attachment {name:?} is outside {}: a row may attach only files under the data file's directory (allow another with --attachments-from DIR)",
            root.display()
        );
    }
    Ok(path)
}

/// The row's `id` (made safe for a Message-ID), else a hash of template, recipients and data.
fn message_key(template: &str, vars: &Value, draft: &Draft) -> Result<String> {
    match vars.get("id") {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(safe_key(s.trim())),
        Some(Value::Number(n)) => Ok(safe_key(&n.to_string())),
        Some(Value::Null) | None => {
            let mut h = Sha256::new();
            h.update(template.as_bytes());
            for list in [&draft.to, &draft.cc, &draft.bcc] {
                h.update(b"\0");
                h.update(list.join("\x1f").as_bytes());
            }
            h.update(b"\0");
            h.update(serde_json::to_vec(vars)?);
            Ok(hex(&h.finalize()[..12]))
        }
        Some(Value::String(_)) => anyhow::bail!("`id` is empty"),
        Some(other) => anyhow::bail!("`id` must be a string or number, found {other}"),
    }
}

fn safe_key(id: &str) -> String {
    let clean: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if clean == id && id.len() <= 64 {
        clean
    } else {
        // Keep it readable but unique: the cleaned prefix plus a hash of the original.
        format!(
            "{}-{}",
            &clean[..clean.len().min(32)],
            hex(&Sha256::digest(id.as_bytes())[..6])
        )
    }
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The default batch name: a hash of account, template and data file, so rerunning the same
/// command resumes the same journal.
pub fn batch_name(account: &str, template: &str, data_file: &Path) -> String {
    let canonical = data_file
        .canonicalize()
        .unwrap_or_else(|_| data_file.to_path_buf());
    let mut h = Sha256::new();
    for part in [
        account.as_bytes(),
        template.as_bytes(),
        canonical.as_os_str().as_encoded_bytes(),
    ] {
        h.update(part);
        h.update(b"\0");
    }
    hex(&h.finalize()[..8])
}

pub use batch::{run_batch, BatchOptions, Summary};

/// Where journals live.
pub fn journal_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("journal")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys: ids are kept when safe, hashed otherwise; without an id the hash covers recipients.
    #[test]
    fn message_keys() {
        assert_eq!(safe_key("row-17"), "row-17");
        let odd = safe_key("a b@c");
        assert!(
            odd.starts_with("a_b_c-") && odd.len() == "a_b_c-".len() + 12,
            "{odd}"
        );
        let d1 = Draft {
            to: vec!["a@x".into()],
            ..Draft::default()
        };
        let d2 = Draft {
            to: vec!["b@x".into()],
            ..Draft::default()
        };
        let vars = serde_json::json!({"n": 1});
        let k1 = message_key("t", &vars, &d1).expect("key");
        assert_eq!(k1, message_key("t", &vars, &d1).expect("key"), "stable");
        assert_ne!(k1, message_key("t", &vars, &d2).expect("key"));
        assert_eq!(k1.len(), 24);
    }
}
