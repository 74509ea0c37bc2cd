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

/// A data file as text, for [`rows`] (read once, walked row by row as often as needed): a regular
/// file (a FIFO or device is refused) of at most [`MAX_DATA_BYTES`].
///
/// # Errors
/// The file is unreadable, too large or not UTF-8.
pub fn load_text(path: &Path) -> Result<String> {
    let bytes = crate::fsutil::read_limited(path, MAX_DATA_BYTES)
        .with_context(|| format!("failed to read data file {}", path.display()))?;
    String::from_utf8(bytes).with_context(|| format!("data file {} is not UTF-8", path.display()))
}

/// The rows in `text`, read as the kind of file `path` names (`.csv`, `.jsonl`/`.ndjson`, else
/// JSON); `path` also names the file in messages.
///
/// # Errors
/// The text is malformed (the message names file and line).
pub fn parse_rows(text: &str, path: &Path) -> Result<Vec<Row>> {
    rows(text, path)?.collect()
}

/// Reads a JSON object of variables (for `--data` with a single message).
///
/// # Errors
/// The file is unreadable or not a JSON object.
pub fn load_object(path: &Path) -> Result<Map<String, Value>> {
    let text = load_text(path)?;
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

/// The rows in `text` one at a time (as [`parse_rows`], without holding them all): a merge of
/// 100,000 rows keeps one in memory.
///
/// # Errors
/// A CSV file without a header line; later problems come as the iterator's items.
pub fn rows<'a>(text: &'a str, path: &'a Path) -> Result<Rows<'a>> {
    let walk = match kind(path) {
        Kind::Csv => {
            let mut reader = csv::ReaderBuilder::new()
                .flexible(false)
                .from_reader(text.as_bytes());
            let headers: Vec<String> = reader
                .headers()
                .with_context(|| format!("failed to read the header line of {}", path.display()))?
                .iter()
                .map(|h| h.trim().to_string())
                .collect();
            Walk::Csv {
                reader,
                headers,
                record: csv::StringRecord::new(),
            }
        }
        Kind::Jsonl => Walk::Jsonl {
            lines: text.lines().enumerate(),
        },
        Kind::Json => Walk::Json {
            text,
            at: 0,
            index: 0,
        },
    };
    Ok(Rows {
        path,
        walk,
        done: false,
    })
}

/// Rows of a data file, read as they are asked for; the first error ends the walk.
pub struct Rows<'a> {
    path: &'a Path,
    walk: Walk<'a>,
    done: bool,
}

enum Walk<'a> {
    Csv {
        reader: csv::Reader<&'a [u8]>,
        headers: Vec<String>,
        record: csv::StringRecord,
    },
    Jsonl {
        lines: std::iter::Enumerate<std::str::Lines<'a>>,
    },
    /// A JSON array walked element by element: `at` is the byte offset after the last one.
    Json {
        text: &'a str,
        at: usize,
        index: usize,
    },
}

impl Iterator for Rows<'_> {
    type Item = Result<Row>;

    fn next(&mut self) -> Option<Result<Row>> {
        if self.done {
            return None;
        }
        let path = self.path;
        let next = match &mut self.walk {
            Walk::Csv {
                reader,
                headers,
                record,
            } => csv_row(reader, headers, record, path),
            Walk::Jsonl { lines } => jsonl_row(lines, path),
            Walk::Json { text, at, index } => json_row(text, at, index, path),
        };
        match next {
            Ok(Some(row)) => Some(Ok(row)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

fn csv_row(
    reader: &mut csv::Reader<&[u8]>,
    headers: &[String],
    record: &mut csv::StringRecord,
    path: &Path,
) -> Result<Option<Row>> {
    if !reader
        .read_record(record)
        .with_context(|| format!("{} is not valid CSV", path.display()))?
    {
        return Ok(None);
    }
    let line = record.position().map_or(0, |p| p.line() as usize);
    let vars = headers
        .iter()
        .zip(record.iter())
        .map(|(h, v)| (h.clone(), Value::String(v.to_string())))
        .collect();
    Ok(Some(Row { number: line, vars }))
}

fn jsonl_row(
    lines: &mut std::iter::Enumerate<std::str::Lines<'_>>,
    path: &Path,
) -> Result<Option<Row>> {
    for (i, line) in lines {
        if line.trim().is_empty() {
            continue;
        }
        return match serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not valid JSON", path.display(), i + 1))?
        {
            Value::Object(vars) => Ok(Some(Row {
                number: i + 1,
                vars,
            })),
            _ => bail!("{}:{}: expected a JSON object", path.display(), i + 1),
        };
    }
    Ok(None)
}

/// The next element of a JSON array: `[` before the first, then `,` or `]` after each one.
fn json_row(text: &str, at: &mut usize, index: &mut usize, path: &Path) -> Result<Option<Row>> {
    let not_an_array = || {
        anyhow::anyhow!(
            "data file {} must hold a JSON array of objects (one per message)",
            path.display()
        )
    };
    let rest = text[*at..].trim_start();
    let (rest, separated) = if *index == 0 {
        let first = rest.strip_prefix('[').ok_or_else(not_an_array)?;
        (first.trim_start(), true)
    } else if let Some(more) = rest.strip_prefix(',') {
        (more.trim_start(), true)
    } else {
        (rest, false)
    };
    if let Some(after) = rest.strip_prefix(']') {
        if separated && *index > 0 {
            bail!(
                "data file {} is not valid JSON: a `,` before the closing `]`",
                path.display()
            );
        }
        if !after.trim().is_empty() {
            bail!(
                "data file {} is not valid JSON: trailing characters after the array",
                path.display()
            );
        }
        *at = text.len();
        return Ok(None);
    }
    if !separated {
        bail!(
            "data file {} is not valid JSON: expected `,` or `]` after row {index}",
            path.display()
        );
    }
    *index += 1;
    let mut values = serde_json::Deserializer::from_str(rest).into_iter::<Value>();
    let value = match values.next() {
        Some(v) => v.with_context(|| format!("data file {} is not valid JSON", path.display()))?,
        None => bail!(
            "data file {} is not valid JSON: the array is not closed",
            path.display()
        ),
    };
    *at = text.len() - rest.len() + values.byte_offset();
    match value {
        Value::Object(vars) => Ok(Some(Row {
            number: *index,
            vars,
        })),
        _ => bail!("{} row {index}: expected a JSON object", path.display()),
    }
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

    fn load(path: &Path) -> Result<Vec<Row>> {
        parse_rows(&load_text(path)?, path)
    }

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

    /// The JSON array walked row by row reads exactly what a whole-document parse reads, and
    /// refuses what it refuses.
    #[test]
    fn json_array_walk_matches_whole_parse() {
        let good = [
            "[]",
            " [ ] ",
            r#"[{"a":1}]"#,
            "[ {\"a\": [1, {\"b\": \"]\"}]} ,\n{\"c\":\"x,y\"} ]\n",
        ];
        for text in good {
            let whole: Vec<Value> = serde_json::from_str(text).expect(text);
            let rows = parse_rows(text, Path::new("r.json")).expect(text);
            let walked: Vec<Value> = rows.into_iter().map(|r| Value::Object(r.vars)).collect();
            assert_eq!(walked, whole, "{text}");
        }
        for bad in [
            "", "{}", "[", "[{}", "[{},]", "[{} {}]", "[{}] x", "[1]", "[{},,{}]", "[,{}]",
        ] {
            assert!(
                parse_rows(bad, Path::new("r.json")).is_err(),
                "{bad:?} was accepted"
            );
        }
    }

    proptest::proptest! {
        /// Any array of objects, however spaced, reads back as serde_json reads it whole.
        #[test]
        fn json_arrays_round_trip(
            rows in proptest::collection::vec(
                proptest::collection::btree_map("[a-z\\]\\[,\"]{0,4}", "[ -~]{0,6}", 0..4), 0..6),
            pretty in proptest::bool::ANY,
        ) {
            let value = serde_json::to_value(&rows).expect("value");
            let text = if pretty {
                serde_json::to_string_pretty(&value).expect("text")
            } else {
                serde_json::to_string(&value).expect("text")
            };
            let walked: Vec<Value> = parse_rows(&text, Path::new("r.json"))
                .expect("parse")
                .into_iter()
                .map(|r| Value::Object(r.vars))
                .collect();
            proptest::prop_assert_eq!(Value::Array(walked), value);
        }
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
