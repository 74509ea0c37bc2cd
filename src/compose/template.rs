//! Mail templates: one file `NAME.j2` with the blocks `subject`, `text` and optionally `html`
//! (the django-templated-email convention), so `{% extends "layout.j2" %}` shares a layout.
//!
//! Rendered by minijinja with strict undefined (a missing variable is an error naming the file,
//! the line and the variable, never an empty string in someone's inbox). The `html` block is
//! rendered with HTML auto-escaping, `subject` and `text` without: two environments over the same
//! directory, each block rendered from one evaluated state of its environment.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use minijinja::{AutoEscape, Environment, ErrorKind, UndefinedBehavior, Value};

/// The rendered parts of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// The subject, trimmed, on one line.
    pub subject: String,
    /// The plain-text body.
    pub text: String,
    /// The HTML body, if the template has an `html` block.
    pub html: Option<String>,
}

/// A templates directory, ready to render.
pub struct Templates {
    dir: PathBuf,
    plain: Environment<'static>,
    html: Environment<'static>,
}

impl Templates {
    /// Templates from `dir`.
    pub fn new(dir: &Path) -> Self {
        let make = |escape: AutoEscape| {
            let mut env = Environment::new();
            env.set_loader(minijinja::path_loader(dir));
            // Read once: a batch is checked and sent with the same template (and no `stat` per
            // message).
            env.set_auto_reload(false);
            env.set_undefined_behavior(UndefinedBehavior::Strict);
            env.set_auto_escape_callback(move |_| escape.clone());
            // Block tags on their own lines leave no blank lines behind (Jinja's trim_blocks and
            // lstrip_blocks), so templates can be laid out readably.
            if let Ok(syntax) = minijinja::syntax::SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .keep_trailing_newline(true)
                .build()
            {
                env.set_syntax(syntax);
            }
            add_filters(&mut env);
            env.set_formatter(refuse_line_breaks_in_subject);
            env
        };
        Self {
            dir: dir.to_path_buf(),
            plain: make(AutoEscape::None),
            html: make(AutoEscape::Html),
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file name of template `name` (`NAME.j2`).
    pub fn file_name(name: &str) -> String {
        if name.ends_with(".j2") {
            name.to_string()
        } else {
            format!("{name}.j2")
        }
    }

    /// Renders template `name` with `vars`.
    ///
    /// # Errors
    /// The template is missing or invalid, lacks a `subject` or `text` block, or uses a variable
    /// `vars` does not have (the message names file, line and variable).
    pub fn render(&self, name: &str, vars: &serde_json::Value) -> Result<Rendered> {
        let file = Self::file_name(name);
        let ctx = Value::from(minijinja::value::Serde(vars));
        let (subject, text) = {
            let tmpl = self
                .plain
                .get_template(&file)
                .map_err(|e| self.describe(e, vars))?;
            let mut captured = tmpl
                .render_captured(ctx.clone())
                .map_err(|e| self.describe(e, vars))?;
            let subject = captured
                .with_state_mut(|s| s.render_block("subject"))
                .map_err(|e| self.describe(e, vars))?;
            let text = captured
                .with_state_mut(|s| s.render_block("text"))
                .map_err(|e| self.describe(e, vars))?;
            (subject, text)
        };
        let html = {
            let tmpl = self
                .html
                .get_template(&file)
                .map_err(|e| self.describe(e, vars))?;
            let mut captured = tmpl
                .render_captured(ctx)
                .map_err(|e| self.describe(e, vars))?;
            match captured.with_state_mut(|s| s.render_block("html")) {
                Ok(html) => Some(html),
                Err(e) if e.kind() == ErrorKind::UnknownBlock => None,
                Err(e) => return Err(self.describe(e, vars)),
            }
        };
        let subject = subject.split_whitespace().collect::<Vec<_>>().join(" ");
        if subject.is_empty() {
            bail!(
                "template {} renders an empty subject",
                self.dir.join(&file).display()
            );
        }
        Ok(Rendered {
            subject,
            text,
            html,
        })
    }

    /// A template error as a one-line cause: file and line, and for undefined values the names
    /// the template uses that `vars` lacks.
    fn describe(&self, e: minijinja::Error, vars: &serde_json::Value) -> anyhow::Error {
        let location = match e.name() {
            Some(name) => format!(
                "{}:{}",
                self.dir.join(name).display(),
                e.line().unwrap_or(0)
            ),
            None => self.dir.display().to_string(),
        };
        match e.kind() {
            ErrorKind::TemplateNotFound => {
                anyhow::anyhow!("template {location} not found")
            }
            ErrorKind::UnknownBlock => anyhow::anyhow!(
                "template {location}: a mail template needs the blocks `subject` and `text` (and may have `html`)"
            ),
            ErrorKind::UndefinedError => {
                let missing = e.name().map(|n| self.missing_vars(n, e.line(), vars)).unwrap_or_default();
                let what = match missing.len() {
                    0 => "an undefined value is used".to_string(),
                    1 => format!("undefined variable `{}`", missing.iter().next().unwrap_or(&String::new())),
                    _ => format!(
                        "undefined variables {}",
                        missing.iter().map(|m| format!("`{m}`")).collect::<Vec<_>>().join(", ")
                    ),
                };
                anyhow::anyhow!("template {location}: {what}")
            }
            _ => anyhow::Error::new(e).context(format!("template {location} failed to render")),
        }
    }

    /// Top-level variables template `file` reads that `vars` does not define — those used on the
    /// failing `line` when any are (others may be guarded by `is defined`).
    fn missing_vars(
        &self,
        file: &str,
        line: Option<usize>,
        vars: &serde_json::Value,
    ) -> BTreeSet<String> {
        let Ok(tmpl) = self.plain.get_template(file) else {
            return BTreeSet::new();
        };
        let missing: BTreeSet<String> = tmpl
            .undeclared_variables(false)
            .into_iter()
            .filter(|v| vars.get(v).is_none() && self.plain.globals().all(|(g, _)| g != v))
            .collect();
        let text = line
            .and_then(|l| tmpl.source().lines().nth(l.saturating_sub(1)))
            .unwrap_or_default();
        let on_line: BTreeSet<String> = missing
            .iter()
            .filter(|v| {
                text.match_indices(v.as_str()).any(|(i, _)| {
                    let ident = |c: char| c.is_alphanumeric() || c == '_';
                    !text[..i].ends_with(ident) && !text[i + v.len()..].starts_with(ident)
                })
            })
            .cloned()
            .collect();
        if on_line.is_empty() {
            missing
        } else {
            on_line
        }
    }
}

/// Writes a value like the default formatter, except that a value with a line break is refused
/// inside the `subject` block: it would be folded away silently, or — from a crafted data row —
/// try to start another header.
fn refuse_line_breaks_in_subject(
    out: &mut minijinja::Output<'_>,
    state: &mut minijinja::State<'_, '_>,
    value: &Value,
) -> Result<(), minijinja::Error> {
    if state.current_block() == Some("subject") {
        let text = value
            .as_str()
            .map_or_else(|| value.to_string(), str::to_string);
        if text.contains(['\r', '\n']) {
            return Err(minijinja::Error::new(
                ErrorKind::InvalidOperation,
                "a value with a line break would land in the subject",
            ));
        }
    }
    minijinja::escape_formatter(out, state, value)
}

fn add_filters(env: &mut Environment<'static>) {
    env.add_filter("number", number);
    env.add_filter("filesize", filesize);
    env.add_filter("date", date);
}

/// `{{ 1234567.891 | number(2) }}` → `1,234,567.89`.
fn number(value: f64, decimals: Option<u32>) -> String {
    let decimals = decimals.unwrap_or(0).min(10) as usize;
    let text = format!("{:.*}", decimals, value.abs());
    let (int, frac) = text
        .split_once('.')
        .map_or((text.as_str(), None), |(i, f)| (i, Some(f)));
    let mut grouped = String::new();
    for (i, c) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    let sign = if value < 0.0 && text.chars().any(|c| c.is_ascii_digit() && c != '0') {
        "-"
    } else {
        ""
    };
    match frac {
        Some(f) => format!("{sign}{grouped}.{f}"),
        None => format!("{sign}{grouped}"),
    }
}

/// `{{ 1536000 | filesize }}` → `1.5 MB` (decimal units, as mail clients show).
fn filesize(bytes: f64) -> String {
    const UNITS: [&str; 6] = ["B", "kB", "MB", "GB", "TB", "PB"];
    let mut size = bytes.max(0.0);
    let mut unit = 0;
    while size >= 1000.0 && unit < UNITS.len() - 1 {
        size /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{size:.0} {}", UNITS[0])
    } else {
        format!("{size:.1} {}", UNITS[unit])
    }
}

/// `{{ ts | date }}` / `{{ "2026-11-27T08:00:00Z" | date("%d.%m.%Y %H:%M") }}`: unix seconds or an
/// RFC 3339 string, formatted in UTC with `%Y %m %d %H %M %S %F %T`.
fn date(value: Value, format: Option<String>) -> Result<String, minijinja::Error> {
    let secs: u64 = if let Some(n) = value.as_i64() {
        u64::try_from(n).map_err(|_| bad_date(&value))?
    } else if let Some(s) = value.as_str() {
        let t = humantime::parse_rfc3339_weak(s).map_err(|_| bad_date(&value))?;
        t.duration_since(std::time::UNIX_EPOCH)
            .map_err(|_| bad_date(&value))?
            .as_secs()
    } else {
        return Err(bad_date(&value));
    };
    let iso = crate::clock::rfc3339(secs); // 2026-11-27T16:22:19Z
    let (y, mo, d, h, mi, s) = (
        &iso[0..4],
        &iso[5..7],
        &iso[8..10],
        &iso[11..13],
        &iso[14..16],
        &iso[17..19],
    );
    let format = format.unwrap_or_else(|| "%Y-%m-%d".into());
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(y),
            Some('m') => out.push_str(mo),
            Some('d') => out.push_str(d),
            Some('H') => out.push_str(h),
            Some('M') => out.push_str(mi),
            Some('S') => out.push_str(s),
            Some('F') => out.push_str(&format!("{y}-{mo}-{d}")),
            Some('T') => out.push_str(&format!("{h}:{mi}:{s}")),
            Some('%') => out.push('%'),
            other => {
                return Err(minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    format!(
                        "date: unsupported format %{}",
                        other.map(String::from).unwrap_or_default()
                    ),
                ))
            }
        }
    }
    Ok(out)
}

fn bad_date(value: &Value) -> minijinja::Error {
    minijinja::Error::new(
        ErrorKind::InvalidOperation,
        format!("date: {value} is neither unix seconds nor an RFC 3339 time"),
    )
}

/// Checks that `dir` holds template `name`, for a clear error before any work.
///
/// # Errors
/// The file does not exist.
pub fn check_exists(dir: &Path, name: &str) -> Result<PathBuf> {
    let path = dir.join(Templates::file_name(name));
    std::fs::metadata(&path).with_context(|| format!("template {} not found", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).expect("write");
        }
        dir
    }

    /// Blocks render from one state, with a layout, autoescaping only the HTML.
    #[test]
    fn renders_blocks_with_layout() {
        let dir = dir_with(&[
            ("layout.j2", "{% block subject %}{% endblock %}{% block text %}{% endblock %}{% block html %}<body>{% block content %}{% endblock %}</body>{% endblock %}"),
            ("hello.j2", "{% extends \"layout.j2\" %}{% block subject %}Hi {{ name }}{% endblock %}{% block text %}Hello {{ name }} & co{% endblock %}{% block content %}<p>{{ name }}</p>{% endblock %}"),
        ]);
        let t = Templates::new(dir.path());
        let r = t
            .render("hello", &serde_json::json!({"name": "<Ann>"}))
            .expect("render");
        assert_eq!(r.subject, "Hi <Ann>");
        assert_eq!(r.text, "Hello <Ann> & co");
        assert_eq!(r.html.as_deref(), Some("<body><p>&lt;Ann&gt;</p></body>"));
    }

    /// A missing variable names file, line and variable.
    #[test]
    fn missing_variable_is_named() {
        let dir = dir_with(&[("a.j2", "{% block subject %}x{% endblock %}\n{% block text %}\nDear {{ customer }},{% endblock %}")]);
        let t = Templates::new(dir.path());
        let err = t
            .render("a", &serde_json::json!({"other": 1}))
            .expect_err("undefined");
        let path = dir.path().join("a.j2");
        assert_eq!(
            err.to_string(),
            format!(
                "template {}:3: undefined variable `customer`",
                path.display()
            )
        );
    }

    /// Without an html block the message is text only; a template without subject is refused.
    #[test]
    fn optional_html_required_subject() {
        let dir = dir_with(&[
            (
                "t.j2",
                "{% block subject %}S{% endblock %}{% block text %}T{% endblock %}",
            ),
            ("n.j2", "{% block text %}T{% endblock %}"),
        ]);
        let t = Templates::new(dir.path());
        assert_eq!(
            t.render("t", &serde_json::json!({})).expect("render").html,
            None
        );
        assert!(t.render("n", &serde_json::json!({})).is_err());
        assert!(t
            .render("missing", &serde_json::json!({}))
            .expect_err("nf")
            .to_string()
            .ends_with("not found"));
    }

    /// Number, file size and date filters.
    #[test]
    fn filters() {
        assert_eq!(number(1_234_567.891, Some(2)), "1,234,567.89");
        assert_eq!(number(-1234.0, None), "-1,234");
        assert_eq!(number(999.0, None), "999");
        assert_eq!(filesize(1_536_000.0), "1.5 MB");
        assert_eq!(filesize(512.0), "512 B");
        assert_eq!(
            date(Value::from(1_795_796_539), None).expect("date"),
            "2026-11-27"
        );
        assert_eq!(
            date(
                Value::from("2026-11-27T08:05:00Z"),
                Some("%d.%m.%Y %H:%M".into())
            )
            .expect("date"),
            "27.11.2026 08:05"
        );
        assert!(date(Value::from("yesterday"), None).is_err());
    }
}
