//! Sessions without a database: what a signed-in person is, sealed into a
//! cookie with AES-256-GCM (encrypted and authenticated), so any replica
//! holding the session key can read it and nobody else can read or forge
//! it. A session carries its own expiry and a CSRF token that forms echo.

use base64::Engine as _;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use sha2::Digest as _;

/// The session cookie's name.
pub const COOKIE: &str = "gitfleet_session";
/// The cookie that carries a sign-in under way (its OAuth `state`).
pub const STATE_COOKIE: &str = "gitfleet_oauth";
/// The cookie that carries what an action just did to the pages after it.
pub const FLASH_COOKIE: &str = "gitfleet_flash";
/// How long a session lasts.
pub const SESSION_SECONDS: i64 = 12 * 3600;
/// How long a sign-in may take at GitHub.
pub const STATE_SECONDS: i64 = 600;

/// Who is signed in.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Session {
    pub login: String,
    /// The teams (`org/slug`) fleet.kdl's roles named at sign-in that the
    /// person is an active member of.
    pub teams: Vec<String>,
    /// Their OAuth token, for what they do on GitHub (approving reviews).
    pub token: String,
    /// What every form that writes must echo.
    pub csrf: String,
    /// Unix seconds after which the session is void.
    pub expires: i64,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token or the CSRF secret.
        f.debug_struct("Session")
            .field("login", &self.login)
            .field("teams", &self.teams)
            .field("expires", &self.expires)
            .finish_non_exhaustive()
    }
}

/// A sign-in under way: the OAuth `state` GitHub hands back, and where to
/// go after.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pending {
    pub state: String,
    pub next: String,
    pub expires: i64,
}

/// Seals and opens cookie values under one key.
pub struct Sealer {
    key: LessSafeKey,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(..)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SessionKeyError {
    #[error("the session key file {path} holds {len} bytes; it needs at least 32 random bytes (`head -c 32 /dev/urandom > FILE`)")]
    Short { path: String, len: usize },
    #[error("reading the session key file {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no random bytes for the session key")]
    Random,
}

impl Sealer {
    /// A key from `secret` (32 bytes or more: hashed down to 32).
    pub fn new(secret: &[u8]) -> Sealer {
        let digest = sha2::Sha256::digest(secret);
        let key = UnboundKey::new(&AES_256_GCM, &digest).expect("32 bytes is an AES-256 key");
        Sealer {
            key: LessSafeKey::new(key),
        }
    }

    /// The key in `path`, shared by replicas that must read each other's
    /// sessions.
    pub fn from_file(path: &std::path::Path) -> Result<Sealer, SessionKeyError> {
        let bytes = std::fs::read(path).map_err(|source| SessionKeyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        if bytes.len() < 32 {
            return Err(SessionKeyError::Short {
                path: path.display().to_string(),
                len: bytes.len(),
            });
        }
        Ok(Sealer::new(&bytes))
    }

    /// A key of this process only: sessions end when it does.
    pub fn random() -> Result<Sealer, SessionKeyError> {
        let mut secret = [0u8; 32];
        getrandom::getrandom(&mut secret).map_err(|_| SessionKeyError::Random)?;
        Ok(Sealer::new(&secret))
    }

    /// `value` sealed for a cookie, `purpose` bound in (a state cookie
    /// never opens as a session).
    pub fn seal<T: Serialize>(&self, purpose: &str, value: &T) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        // A nonce must never repeat under a key; 96 random bits do not in
        // any number of sign-ins a fleet sees.
        if getrandom::getrandom(&mut nonce).is_err() {
            return String::new();
        }
        let mut data = serde_json::to_vec(value).unwrap_or_default();
        let sealed = self.key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(purpose.as_bytes()),
            &mut data,
        );
        if sealed.is_err() {
            return String::new();
        }
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(out)
    }

    /// What `cookie` sealed for `purpose`, if this key sealed it.
    pub fn open<T: DeserializeOwned>(&self, purpose: &str, cookie: &str) -> Option<T> {
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(cookie)
            .ok()?;
        if raw.len() < NONCE_LEN {
            return None;
        }
        let (nonce, sealed) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut sealed = sealed.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(purpose.as_bytes()), &mut sealed)
            .ok()?;
        serde_json::from_slice(plain).ok()
    }
}

/// 128 random bits, URL-safe: a CSRF token or an OAuth state.
pub fn token() -> Option<String> {
    let mut bytes = [0u8; 16];
    getrandom::getrandom(&mut bytes).ok()?;
    Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// Equal, in time that does not depend on where they differ.
pub fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let differ = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    a.len() == b.len() && std::hint::black_box(differ) == 0
}

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie<'h>(header: &'h str, name: &str) -> Option<&'h str> {
    header.split(';').find_map(|part| {
        let (k, v) = part.trim().split_once('=')?;
        (k == name).then_some(v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> Session {
        Session {
            login: "alice".into(),
            teams: vec!["acme/sre".into()],
            token: "gho_x".into(),
            csrf: "c".into(),
            expires: 10,
        }
    }

    #[test]
    fn a_sealed_session_opens_only_under_its_key_and_purpose() {
        let sealer = Sealer::new(&[7u8; 32]);
        let sealed = sealer.seal("session", &session());
        assert!(!sealed.contains("alice"), "encrypted, not just signed");
        assert_eq!(sealer.open::<Session>("session", &sealed), Some(session()));
        assert_eq!(sealer.open::<Session>("oauth-state", &sealed), None);
        assert_eq!(
            Sealer::new(&[8u8; 32]).open::<Session>("session", &sealed),
            None
        );
    }

    #[test]
    fn a_tampered_cookie_does_not_open() {
        let sealer = Sealer::new(&[7u8; 32]);
        let sealed = sealer.seal("session", &session());
        let mut raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&sealed)
            .unwrap();
        for i in [0, NONCE_LEN, raw.len() - 1] {
            raw[i] ^= 1;
            let bad = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&raw);
            assert_eq!(sealer.open::<Session>("session", &bad), None, "byte {i}");
            raw[i] ^= 1;
        }
        assert_eq!(sealer.open::<Session>("session", "not base64!"), None);
        assert_eq!(sealer.open::<Session>("session", ""), None);
    }

    #[test]
    fn cookies_are_found_by_name() {
        let h = "a=1; gitfleet_session=xyz; b=2";
        assert_eq!(cookie(h, COOKIE), Some("xyz"));
        assert_eq!(cookie(h, "c"), None);
        assert!(same("abc", "abc") && !same("abc", "abd") && !same("abc", "ab"));
    }
}
