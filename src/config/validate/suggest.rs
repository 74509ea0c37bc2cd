//! "Did you mean": the closest known key or value to a misspelt one.

/// The message for an unknown key, with the closest known one.
pub(super) fn unknown_key_message(key: &str, known: &[&str]) -> String {
    match suggest(key, known) {
        Some(s) => format!("unknown key (did you mean `{s}`?)"),
        None if known.is_empty() => "unknown key".into(),
        None => format!("unknown key (expected one of: {})", known.join(", ")),
    }
}

/// The closest candidate within a small edit distance, for "did you mean".
pub(super) fn suggest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).max(1);
    candidates
        .iter()
        .map(|c| (edit_distance(word, c), *c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Edit distance counting an adjacent transposition as one edit ("hots" → "host" is 1).
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}
/// The message for an unknown word among `choices`, with the closest one.
pub(super) fn choice_message(got: &str, choices: &[&str]) -> String {
    let expected = quoted(choices);
    match suggest(got, choices) {
        Some(s) => {
            format!("unknown value \"{got}\" (expected one of {expected}; did you mean \"{s}\"?)")
        }
        None => format!("unknown value \"{got}\" (expected one of {expected})"),
    }
}

/// `"a", "b", "c"`.
pub(super) fn quoted(words: &[&str]) -> String {
    words
        .iter()
        .map(|w| format!("\"{w}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// "Did you mean" only for near misses.
    #[test]
    fn suggestions() {
        assert_eq!(suggest("hots", &["host", "port"]), Some("host"));
        assert_eq!(suggest("zzzzzz", &["host", "port"]), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
