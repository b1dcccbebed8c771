//! Short forms for people: commit ids, digests, ages, sizes, progress
//! bars, URL path parts. Shared by the terminal output and the pages.

use std::fmt::Write as _;

/// The first `n` characters of `s` (reports are node-written: never cut
/// inside a character).
pub fn prefix(s: &str, n: usize) -> &str {
    s.char_indices().nth(n).map_or(s, |(i, _)| &s[..i])
}

/// `sha256:0123456789ab…` → `0123456789ab`.
pub fn short_digest(digest: &str) -> &str {
    prefix(digest.strip_prefix("sha256:").unwrap_or(digest), 12)
}

pub fn short_commit(commit: &str) -> &str {
    prefix(commit, 12)
}

/// `text` with control characters (a node's ANSI or OSC sequences, say)
/// shown as `?`, lines kept.
pub fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() && c != '\n' { '?' } else { c })
        .collect()
}

/// `95 s` → `1m35s`.
pub fn age(seconds: i64) -> String {
    let s = seconds.max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

/// `1536` → `1.5 KiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// `1 node`, `2 nodes`; `plural` for words that do not just take an `s`.
pub fn count(n: usize, singular: &str, plural: &str) -> String {
    format!("{n} {}", if n == 1 { singular } else { plural })
}

/// The width of a progress bar, in characters.
pub const BAR: usize = 20;

/// A bar of `done` out of `total`.
pub fn bar(done: usize, total: usize) -> String {
    let filled = if total == 0 {
        0
    } else {
        (done.min(total) * BAR).div_ceil(total).min(BAR)
    };
    format!("[{}{}]", "#".repeat(filled), ".".repeat(BAR - filled))
}

/// A component of a URL path or query, percent-encoded.
pub fn url_part(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_in_the_largest_useful_unit() {
        assert_eq!(age(-3), "0s");
        assert_eq!(age(59), "59s");
        assert_eq!(age(95), "1m35s");
        assert_eq!(age(7260), "2h01m");
        assert_eq!(age(90000), "1d01h");
    }

    #[test]
    fn byte_counts_use_binary_units() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(5 * 1024 * 1024), "5.0 MiB");
    }

    #[test]
    fn shortening_never_cuts_a_character_and_controls_are_masked() {
        assert_eq!(short_digest("sha256:ééééééééééééééé"), "éééééééééééé");
        assert_eq!(short_commit("ab"), "ab");
        assert_eq!(printable("a\x1b]0;pwned\x07\nb"), "a?]0;pwned?\nb");
    }

    #[test]
    fn digests_are_shortened_after_the_algorithm() {
        assert_eq!(short_digest("sha256:0123456789abcdef0123"), "0123456789ab");
        assert_eq!(short_digest("abc"), "abc");
    }

    #[test]
    fn counts_say_one_thing_and_many_things() {
        assert_eq!(count(1, "node", "nodes"), "1 node");
        assert_eq!(count(0, "mesh", "meshes"), "0 meshes");
        assert_eq!(count(2, "mesh", "meshes"), "2 meshes");
    }
}
