//! Mail-merge data: rows from CSV (with a header line), a JSON array of objects, or JSON Lines.
//!
//! Each row is a map of template variables. The keys `to`, `cc`, `bcc` (addresses; in CSV
//! separated by `;`), `attachments` (paths relative to the data file; in CSV separated by `;`) and
//! `id` (a stable key for the send journal) have a meaning for the message itself.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::{Map, Value};

/// One data row.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Its position for messages: the line in a CSV or JSONL file, the index (from 1) in a JSON
    /// array.
    pub number: usize,
    /// The variables.
    pub vars: Map<String, Value>,
}

/// What the row numbers count, for messages (`line 7`, `row 3`).
pub fn row_label(path: &Path, number: usize) -> String {
    match kind(path) {
        Kind::Json => format!("{} row {number}", path.display()),
        Kind::Csv | Kind::Jsonl => format!("{}:{number}", path.display()),
    }
}

enum Kind {
    Csv,
    Json,
    Jsonl,
}

fn kind(path: &Path) -> Kind {
    match path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .as_deref()
    {
        Some("csv") => Kind::Csv,
        Some("jsonl" | "ndjson") => Kind::Jsonl,
        _ => Kind::Json,
    }
}

/// The largest data file read: 100,000 rows of a wide CSV are well under this.
pub const MAX_DATA_BYTES: u64 = 512 * 1024 * 1024;

/// A data file as text: a regular file (a FIFO or device is refused) of at most
/// [`MAX_DATA_BYTES`].
fn read_text(path: &Path) -> Result<String> {
    let bytes = crate::fsutil::read_limited(path, MAX_DATA_BYTES)
        .with_context(|| format!("failed to read data file {}", path.display()))?;
    String::from_utf8(bytes).with_context(|| format!("data file {} is not UTF-8", path.display()))
}

/// Reads all rows of `path` (by extension: `.csv`, `.jsonl`/`.ndjson`, else JSON).
///
/// # Errors
/// The file is unreadable or malformed (the message names file and line).
pub fn load(path: &Path) -> Result<Vec<Row>> {
    parse_rows(&read_text(path)?, path)
}

/// The rows in `text`, read as the kind of file `path` names (`.csv`, `.jsonl`/`.ndjson`, else
/// JSON); `path` also names the file in messages.
///
/// # Errors
/// The text is malformed (the message names file and line).
pub fn parse_rows(text: &str, path: &Path) -> Result<Vec<Row>> {
    match kind(path) {
        Kind::Csv => csv_rows(text, path),
        Kind::Jsonl => jsonl_rows(text, path),
        Kind::Json => json_rows(text, path),
    }
}

/// Reads a JSON object of variables (for `--data` with a single message).
///
/// # Errors
/// The file is unreadable or not a JSON object.
pub fn load_object(path: &Path) -> Result<Map<String, Value>> {
    let text = read_text(path)?;
    match serde_json::from_str(&text)
        .with_context(|| format!("data file {} is not valid JSON", path.display()))?
    {
        Value::Object(map) => Ok(map),
        _ => bail!(
            "data file {} must hold a JSON object of variables",
            path.display()
        ),
    }
}

fn csv_rows(text: &str, path: &Path) -> Result<Vec<Row>> {
    let mut reader = csv::ReaderBuilder::new()
        .flexible(false)
        .from_reader(text.as_bytes());
    let headers: Vec<String> = reader
        .headers()
        .with_context(|| format!("failed to read the header line of {}", path.display()))?
        .iter()
        .map(|h| h.trim().to_string())
        .collect();
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.with_context(|| format!("{} is not valid CSV", path.display()))?;
        let line = record.position().map_or(0, |p| p.line() as usize);
        let vars = headers
            .iter()
            .zip(record.iter())
            .map(|(h, v)| (h.clone(), Value::String(v.to_string())))
            .collect();
        rows.push(Row { number: line, vars });
    }
    Ok(rows)
}

fn json_rows(text: &str, path: &Path) -> Result<Vec<Row>> {
    let value: Value = serde_json::from_str(text)
        .with_context(|| format!("data file {} is not valid JSON", path.display()))?;
    let Value::Array(items) = value else {
        bail!(
            "data file {} must hold a JSON array of objects (one per message)",
            path.display()
        );
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| match item {
            Value::Object(vars) => Ok(Row {
                number: i + 1,
                vars,
            }),
            _ => bail!("{} row {}: expected a JSON object", path.display(), i + 1),
        })
        .collect()
}

fn jsonl_rows(text: &str, path: &Path) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not valid JSON", path.display(), i + 1))?
        {
            Value::Object(vars) => rows.push(Row {
                number: i + 1,
                vars,
            }),
            _ => bail!("{}:{}: expected a JSON object", path.display(), i + 1),
        }
    }
    Ok(rows)
}

/// A list-valued field: a JSON array of strings, or a string split on `;` (CSV).
///
/// # Errors
/// The value is neither a string nor an array of strings.
pub fn list(value: Option<&Value>, key: &str) -> Result<Vec<String>, String> {
    match value {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(s
            .split(';')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| match i {
                Value::String(s) => Ok(s.trim().to_string()),
                other => Err(format!("`{key}` must list strings, found {other}")),
            })
            .collect(),
        Some(other) => Err(format!(
            "`{key}` must be a string or a list of strings, found {other}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write");
        (dir, path)
    }

    /// CSV rows carry their line numbers (quoted newlines included) and string values.
    #[test]
    fn csv_with_lines() {
        let (_d, p) = write(
            "r.csv",
            "to,name\na@x.com,Ann\n\"b@x.com\",\"Bob\nJr\"\nc@x.com,Cy\n",
        );
        let rows = load(&p).expect("load");
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].number, 2);
        assert_eq!(rows[1].vars["name"], "Bob\nJr");
        assert_eq!(rows[2].number, 5);
    }

    /// JSON arrays and JSON Lines both work; non-objects are named.
    #[test]
    fn json_and_jsonl() {
        let (_d, p) = write(
            "r.json",
            r#"[{"to":["a@x.com","b@x.com"],"n":1},{"to":"c@x.com"}]"#,
        );
        let rows = load(&p).expect("load");
        assert_eq!(
            list(rows[0].vars.get("to"), "to").expect("list"),
            ["a@x.com", "b@x.com"]
        );
        let (_d, p) = write("r.jsonl", "{\"to\":\"a@x.com\"}\n\n{\"to\":\"b@x.com\"}\n");
        let rows = load(&p).expect("load");
        assert_eq!(rows[1].number, 3);
        let (_d, p) = write("r.jsonl", "{\"to\":\"a@x.com\"}\n[1]\n");
        assert!(format!("{:#}", load(&p).expect_err("array"))
            .contains("r.jsonl:2: expected a JSON object"));
        assert_eq!(
            list(Some(&Value::from("a@x.com; b@x.com")), "to").expect("split"),
            ["a@x.com", "b@x.com"]
        );
    }

    proptest::proptest! {
        /// Malformed data is an error naming the file, never a panic.
        #[test]
        fn any_data_text_is_handled(text in ".*") {
            for name in ["rows.csv", "rows.json", "rows.jsonl"] {
                let _ = parse_rows(&text, Path::new(name));
            }
        }
    }
}
