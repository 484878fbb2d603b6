//! "Did you mean": a mistyped subcommand, value or flag gets the closest real one as a tip
//! in clap's error. Our own edit distance (optimal string alignment: a swap of two letters
//! counts once, so `gte` finds `get`) instead of clap's `suggestions` feature, whose Jaro
//! score misses short transpositions and which adds a dependency. [`closest`] and
//! [`command_at`] are pure; [`with_tip`] adds the tip to a clap error.

use clap::error::{ContextKind, ContextValue, ErrorKind};

/// The optimal-string-alignment distance: insertions, deletions, substitutions and swaps
/// of two adjacent characters, each counting 1. Pure.
pub fn distance(a: &str, b: &str) -> usize {
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

/// The candidate closest to `word`, if close enough to be what was meant: at most 1 edit
/// for words of up to 4 characters, 2 for longer ones, or `word` is a prefix of exactly
/// one candidate. Ties go to the first candidate. Pure.
pub fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let prefixed: Vec<&str> = candidates
        .iter()
        .copied()
        .filter(|c| word.len() >= 2 && c.starts_with(word))
        .collect();
    if let [only] = prefixed.as_slice() {
        return Some(only);
    }
    let limit = if word.chars().count() <= 4 { 1 } else { 2 };
    candidates
        .iter()
        .map(|c| (distance(word, c), *c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// The (sub)command that was being parsed when `bad` was met: follow the words of `argv`
/// (after the program name) that name subcommands, up to `bad`. Pure.
pub fn command_at<'a>(root: &'a clap::Command, argv: &[String], bad: &str) -> &'a clap::Command {
    let mut cmd = root;
    for word in argv.iter().skip(1) {
        if word == bad || word == "--" {
            break;
        }
        if let Some(sub) = cmd.find_subcommand(word) {
            cmd = sub;
        }
    }
    cmd
}

fn context_str(e: &clap::Error, kind: ContextKind) -> Option<String> {
    match e.get(kind)? {
        ContextValue::String(s) => Some(s.clone()),
        _ => None,
    }
}

/// Adds a "tip: a similar ... exists" to `e` when clap has none and one is close.
pub fn with_tip(mut e: clap::Error, root: &clap::Command, argv: &[String]) -> clap::Error {
    match e.kind() {
        ErrorKind::InvalidSubcommand if e.get(ContextKind::SuggestedSubcommand).is_none() => {
            let Some(bad) = context_str(&e, ContextKind::InvalidSubcommand) else {
                return e;
            };
            let cmd = command_at(root, argv, &bad);
            let names: Vec<&str> = cmd
                .get_subcommands()
                .filter(|s| !s.is_hide_set())
                .map(|s| s.get_name())
                .collect();
            if let Some(best) = closest(&bad, &names) {
                e.insert(
                    ContextKind::SuggestedSubcommand,
                    ContextValue::String(best.to_string()),
                );
            }
        }
        ErrorKind::InvalidValue if e.get(ContextKind::SuggestedValue).is_none() => {
            let (Some(bad), Some(ContextValue::Strings(valid))) = (
                context_str(&e, ContextKind::InvalidValue),
                e.get(ContextKind::ValidValue),
            ) else {
                return e;
            };
            let valid: Vec<&str> = valid.iter().map(String::as_str).collect();
            if let Some(best) = closest(&bad, &valid).map(str::to_string) {
                e.insert(ContextKind::SuggestedValue, ContextValue::String(best));
            }
        }
        ErrorKind::UnknownArgument if e.get(ContextKind::SuggestedArg).is_none() => {
            let Some(bad) = context_str(&e, ContextKind::InvalidArg) else {
                return e;
            };
            let Some(flag) = bad.strip_prefix("--") else {
                return e;
            };
            let flag = flag.split('=').next().unwrap_or(flag);
            let cmd = command_at(root, argv, &bad);
            // Global flags are defined on the root but accepted everywhere.
            let longs: Vec<&str> = cmd
                .get_arguments()
                .chain(root.get_arguments().filter(|a| a.is_global_set()))
                .filter_map(|a| a.get_long())
                .collect();
            if let Some(best) = closest(flag, &longs) {
                e.insert(
                    ContextKind::SuggestedArg,
                    ContextValue::String(format!("--{best}")),
                );
            }
        }
        _ => {}
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swaps_count_once() {
        assert_eq!(distance("gte", "get"), 1);
        assert_eq!(distance("statsu", "status"), 1);
        assert_eq!(distance("get", "get"), 0);
        assert_eq!(distance("", "lab"), 3);
        assert_eq!(distance("ipma", "ipam"), 1);
        assert_eq!(distance("kitten", "sitting"), 3);
    }

    #[test]
    fn only_close_words_are_suggested() {
        let top = ["get", "apply", "delete", "node", "ipam", "lab"];
        assert_eq!(closest("gte", &top), Some("get"));
        assert_eq!(closest("aply", &top), Some("apply"));
        assert_eq!(closest("delte", &top), Some("delete"));
        assert_eq!(closest("ipma", &top), Some("ipam"));
        assert_eq!(closest("nodes", &top), Some("node"));
        assert_eq!(closest("del", &top), Some("delete"), "a prefix of one");
        assert_eq!(closest("frobnicate", &top), None);
        assert_eq!(closest("xyz", &top), None);
        // A prefix of several is no answer by itself.
        assert_eq!(closest("st", &["status", "store", "stop"]), None);
    }
}
