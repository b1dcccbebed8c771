//! A fleet repo as bytes in memory: the input to every pure decision.
//!
//! The reconciler fills a [`RepoFiles`] from a working tree or a git tree;
//! nothing here reads the disk.

use std::collections::BTreeMap;

/// Files of a fleet repo by path relative to its root (`/`-separated).
/// Iteration is in path order, so everything derived from it is deterministic.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RepoFiles {
    files: BTreeMap<String, Vec<u8>>,
}

impl RepoFiles {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, path: impl Into<String>, bytes: impl Into<Vec<u8>>) {
        self.files.insert(path.into(), bytes.into());
    }

    /// Drop `path`; its bytes, if it was there.
    pub fn remove(&mut self, path: &str) -> Option<Vec<u8>> {
        self.files.remove(path)
    }

    pub fn get(&self, path: &str) -> Option<&[u8]> {
        self.files.get(path).map(Vec::as_slice)
    }

    /// The file as text, if it is valid UTF-8.
    pub fn text(&self, path: &str) -> Option<&str> {
        self.get(path).and_then(|b| std::str::from_utf8(b).ok())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.files.iter().map(|(p, b)| (p.as_str(), b.as_slice()))
    }

    /// Files whose path starts with `prefix` (e.g. `"nodes/"`).
    pub fn under<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a str, &'a [u8])> {
        self.files
            .range(prefix.to_owned()..)
            .take_while(move |(p, _)| p.starts_with(prefix))
            .map(|(p, b)| (p.as_str(), b.as_slice()))
    }

    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

/// Line starts of a text, to turn byte offsets into 1-based line and column.
#[derive(Debug)]
pub struct LineIndex<'a> {
    text: &'a str,
    starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    pub fn new(text: &'a str) -> Self {
        let starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Self { text, starts }
    }

    /// 1-based line and column (in characters) of byte `offset`.
    pub fn position(&self, offset: usize) -> (u32, u32) {
        let offset = offset.min(self.text.len());
        let line = self.starts.partition_point(|&s| s <= offset) - 1;
        let start = self.starts[line];
        let column = self
            .text
            .get(start..offset)
            .map_or(offset - start, |s| s.chars().count());
        (to_u32(line + 1), to_u32(column + 1))
    }

    /// Byte offset of a 1-based line and character column: the inverse of
    /// [`LineIndex::position`].
    pub fn offset(&self, line: u32, column: u32) -> usize {
        let Some(&start) = self.starts.get((line as usize).saturating_sub(1)) else {
            return self.text.len();
        };
        let rest = &self.text[start..];
        rest.char_indices()
            .nth((column as usize).saturating_sub(1))
            .map_or(self.text.len(), |(i, _)| start + i)
    }
}

fn to_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_counts_lines_and_characters_from_one() {
        let idx = LineIndex::new("ab\nçd\n");
        assert_eq!(idx.position(0), (1, 1));
        assert_eq!(idx.position(3), (2, 1));
        // `ç` is two bytes; `d` is the second character of line 2.
        assert_eq!(idx.position(5), (2, 2));
        assert_eq!(idx.position(99), (3, 1));
    }

    #[test]
    fn offset_inverts_position() {
        let text = "version 1\nnamé \"x\"\n";
        let idx = LineIndex::new(text);
        for off in text.char_indices().map(|(i, _)| i) {
            let (l, c) = idx.position(off);
            assert_eq!(idx.offset(l, c), off);
        }
    }

    #[test]
    fn under_lists_only_that_directory() {
        let mut r = RepoFiles::new();
        r.insert("nodes/a.kdl", "x");
        r.insert("nodes/b.kdl", "y");
        r.insert("nodesx/c.kdl", "z");
        r.insert("meshes/m.kdl", "w");
        let names: Vec<_> = r.under("nodes/").map(|(p, _)| p).collect();
        assert_eq!(names, ["nodes/a.kdl", "nodes/b.kdl"]);
    }
}
