//! The one form a bundle digest takes, shared by the signed formats
//! (`trust`) and the object key map (`keys`).

/// Whether `digest` is `sha256:` and 64 lowercase hex digits, the only form
/// a bundle digest takes.
pub fn valid_digest(digest: &str) -> bool {
    digest.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}
