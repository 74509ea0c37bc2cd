//! The only place that prints. stdout carries data (JSON with `--json`); messages, warnings and
//! errors go to stderr.

use std::io::{self, Write};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::error;
use crate::secret::Secret;

/// Version of every `--json` document; bumped on incompatible changes.
pub const JSON_SCHEMA_VERSION: u32 = 1;

/// Output settings resolved from the global flags.
#[derive(Debug, Clone, Copy, Default)]
pub struct Output {
    json: bool,
    quiet: bool,
}

impl Output {
    /// `json`: machine-readable stdout; `quiet`: no informational messages on stderr.
    pub fn new(json: bool, quiet: bool) -> Self {
        Self { json, quiet }
    }

    /// Whether `--json` was given.
    pub fn is_json(&self) -> bool {
        self.json
    }

    /// Writes one line of data to stdout.
    ///
    /// # Errors
    /// stdout is closed.
    pub fn data(&self, line: &str) -> Result<()> {
        let mut out = io::stdout().lock();
        writeln!(out, "{line}")
            .and_then(|()| out.flush())
            .context("failed to write to stdout")
    }

    /// Writes a whole document (a man page, a completion script) to stdout as it is.
    ///
    /// # Errors
    /// stdout is closed.
    pub fn document(&self, bytes: &[u8]) -> Result<()> {
        let mut out = io::stdout().lock();
        out.write_all(bytes)
            .and_then(|()| out.flush())
            .context("failed to write to stdout")
    }

    /// Writes a secret to stdout: only for commands whose purpose is to hand it to another program
    /// (`auth token`).
    ///
    /// # Errors
    /// stdout is closed.
    pub fn secret(&self, secret: &Secret) -> Result<()> {
        self.data(secret.expose())
    }

    /// Writes a JSON document (one line) to stdout.
    ///
    /// # Errors
    /// stdout is closed or the value cannot be encoded.
    pub fn json<T: Serialize>(&self, value: &T) -> Result<()> {
        // Written as it is encoded: a document holding a 20 MB message body is not built as a
        // second 20 MB string first.
        let mut out = io::BufWriter::with_capacity(64 * 1024, io::stdout().lock());
        serde_json::to_writer(&mut out, value)
            .map_err(io::Error::from)
            .and_then(|()| out.write_all(b"\n"))
            .and_then(|()| out.flush())
            .context("failed to write to stdout")
    }

    /// An informational message on stderr (suppressed by `-q`).
    pub fn info(&self, message: &str) {
        if !self.quiet {
            eprintln!("{}", printable(message));
        }
    }

    /// A one-line progress counter on stderr, redrawn in place; only when stderr is a terminal
    /// (logs and cron mail stay clean) and not `-q`. Call [`Output::progress_end`] after the last.
    pub fn progress(&self, what: &str, done: usize, total: usize) {
        use std::io::IsTerminal;
        if !self.quiet && io::stderr().is_terminal() {
            let mut err = io::stderr().lock();
            let _ = write!(err, "\r{what} {done}/{total}");
            let _ = err.flush();
        }
    }

    /// Ends a progress line.
    pub fn progress_end(&self) {
        use std::io::IsTerminal;
        if !self.quiet && io::stderr().is_terminal() {
            eprintln!();
        }
    }

    /// Text a person must read to go on (a sign-in URL, a device code, "paste here"): on stderr,
    /// shown even with `-q`.
    pub fn prompt(&self, message: &str) {
        eprintln!("{message}");
    }

    /// A warning on stderr (always shown).
    pub fn warn(&self, message: &str) {
        eprintln!("warning: {}", printable(message));
    }
}

/// `text` without control characters other than line breaks and tabs: the last guard before a
/// terminal, for text that may carry a server's words (terminal escapes, NUL).
fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_char = |c: char| c.is_control() && c != '\n' && c != '\t';
    if text.chars().any(unsafe_char) {
        text.chars()
            .filter(|c| !unsafe_char(*c))
            .collect::<String>()
            .into()
    } else {
        text.into()
    }
}

/// The lines of an error report: `error: …`, then `  caused by: …` for each cause whose text does
/// not repeat the line before it, then the details and the `hint: …`.
pub fn error_report(err: &anyhow::Error) -> Vec<String> {
    let mut lines = vec![format!("error: {err}")];
    let mut previous = err.to_string();
    for cause in err.chain().skip(1) {
        let text = cause.to_string();
        if text.is_empty() || previous.contains(&text) {
            continue;
        }
        lines.push(format!("  caused by: {text}"));
        previous = text;
    }
    lines.extend(error::details(err).into_iter().map(|d| format!("  {d}")));
    if let Some(hint) = error::hint(err) {
        lines.push(format!("hint: {hint}"));
    }
    lines
}

/// Prints [`error_report`] to stderr.
pub fn report_error(err: &anyhow::Error) {
    let mut stderr = io::stderr().lock();
    for line in error_report(err) {
        let _ = writeln!(stderr, "{}", printable(&line));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Terminal escapes never reach stderr through the output module.
    #[test]
    fn printable_drops_escapes() {
        assert_eq!(printable("a\x1b[2Jb\n\tc\0"), "a[2Jb\n\tc");
        assert!(matches!(printable("plain"), std::borrow::Cow::Borrowed(_)));
    }

    /// Causes that repeat the previous line are dropped; hints come last.
    #[test]
    fn report_drops_repeats() {
        let inner = anyhow::anyhow!("connection refused");
        let err = inner
            .context("connection refused")
            .context("failed to reach the token endpoint");
        assert_eq!(
            error_report(&err),
            [
                "error: failed to reach the token endpoint",
                "  caused by: connection refused"
            ]
        );
    }
}
