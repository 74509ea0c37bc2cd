//! The module map of ARCHITECTURE.md, checked against the source: each top-level module uses only
//! modules of lower layers (so there is no circle), and only `output` (and `main`) print.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

/// The layers, lowest first: a module may use modules of strictly lower layers only. The same
/// table, with what each layer must not do, is in ARCHITECTURE.md.
const LAYERS: &[&[&str]] = &[
    &["error", "secret", "clock", "paths", "fsutil"],
    &["config", "exit", "output", "trust", "seal"],
    &["db"],
    &["oauth", "sasl", "net", "compose", "journal", "schedule"],
    &["mail_auth"],
    &["smtp", "imap"],
    &["send", "poll", "outbox"],
    &["relay", "migrate"],
    &["cli"],
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without comments and without its `#[cfg(test)]` module.
fn code(path: &Path) -> String {
    let text = fs::read_to_string(path).expect("read source");
    let text = text.split("#[cfg(test)]").next().unwrap_or_default();
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Top-level module → the top-level modules its code names as `crate::X`.
fn uses() -> BTreeMap<String, Vec<String>> {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for file in files {
        let rel = file.strip_prefix(src()).expect("under src");
        let top = rel
            .components()
            .next()
            .map(|c| {
                c.as_os_str()
                    .to_string_lossy()
                    .trim_end_matches(".rs")
                    .to_string()
            })
            .unwrap_or_default();
        if top == "main" || top == "lib" {
            continue;
        }
        let used = map.entry(top.clone()).or_default();
        let code = code(&file);
        for (i, _) in code.match_indices("crate::") {
            let rest = &code[i + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if name != top && !name.is_empty() && !used.contains(&name) {
                used.push(name);
            }
        }
    }
    map
}

fn layer(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

/// Every module sits in a layer and uses only lower ones; `error` uses nothing.
#[test]
fn modules_use_only_lower_layers() {
    let mut wrong = Vec::new();
    for (module, used) in uses() {
        let Some(own) = layer(&module) else {
            wrong.push(format!(
                "{module} is in no layer: add it to LAYERS and ARCHITECTURE.md"
            ));
            continue;
        };
        for u in used {
            match layer(&u) {
                Some(l) if l < own => {}
                _ => wrong.push(format!("{module} (layer {own}) uses {u}")),
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert_eq!(
        uses().get("error").map(Vec::len),
        Some(0),
        "error.rs is a leaf"
    );
}

/// Only the output module (and `main`) write to stdout or stderr.
#[test]
fn only_output_prints() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let printers: Vec<String> = files
        .iter()
        .filter(|f| !f.ends_with("src/output.rs") && !f.ends_with("src/main.rs"))
        .filter(|f| {
            let code = code(f);
            ["println!", "eprintln!", "print!(", "eprint!("]
                .iter()
                .any(|m| code.contains(m))
        })
        .map(|f| f.display().to_string())
        .collect();
    assert!(
        printers.is_empty(),
        "printing outside output.rs: {printers:?}"
    );
}
