//! `POST /webhooks/github`: GitHub's deliveries, checked and turned into
//! reconcile triggers. A webhook is a hint that git moved: the pass it
//! triggers reads git as every pass does, and git is still polled, so a
//! lost delivery only delays a pass.
//!
//! The order of checks: a configured secret, then the signature over the
//! raw body (HMAC-SHA256, compared in constant time), then the delivery id
//! (each handled once), then the payload's shape.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;

use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, Mac as _};
use sha2::Sha256;

/// Delivery ids remembered for de-duplication (GitHub redelivers within
/// hours; ten thousand covers a busy day of one repo).
const REMEMBERED: usize = 10_000;

/// The longest delivery id taken (GitHub's GUIDs have 36 characters).
const MAX_DELIVERY_ID: usize = 64;

/// What became of a delivery: a bounded metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    Accepted,
    Ping,
    Ignored,
    Duplicate,
    Unconfigured,
    BadSignature,
    Malformed,
}

impl Outcome {
    pub const ALL: [Outcome; 7] = [
        Outcome::Accepted,
        Outcome::Ping,
        Outcome::Ignored,
        Outcome::Duplicate,
        Outcome::Unconfigured,
        Outcome::BadSignature,
        Outcome::Malformed,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::Ping => "ping",
            Outcome::Ignored => "ignored",
            Outcome::Duplicate => "duplicate",
            Outcome::Unconfigured => "unconfigured",
            Outcome::BadSignature => "bad-signature",
            Outcome::Malformed => "malformed",
        }
    }
}

/// The answer to one delivery.
#[derive(Debug, PartialEq, Eq)]
pub struct Reply {
    pub outcome: Outcome,
    pub status: StatusCode,
    pub message: String,
}

impl Reply {
    fn new(outcome: Outcome, status: StatusCode, message: impl Into<String>) -> Reply {
        Reply {
            outcome,
            status,
            message: message.into(),
        }
    }
}

/// Whether `signature` (the `X-Hub-Signature-256` value, `sha256=<hex>`)
/// is the HMAC-SHA256 of `body` under `secret`. The comparison is the
/// MAC's own constant-time one.
pub fn signature_matches(secret: &[u8], body: &[u8], signature: &str) -> bool {
    let Some(hex) = signature.strip_prefix("sha256=") else {
        return false;
    };
    let Some(expected) = decode_hex(hex) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

/// The signature GitHub would send for `body`.
#[cfg(test)]
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(body);
    let bytes = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256=");
    for b in bytes {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if hex.len() != 64 {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The last [`REMEMBERED`] delivery ids.
#[derive(Debug, Default)]
struct Seen {
    order: VecDeque<String>,
    ids: HashSet<String>,
}

impl Seen {
    /// False when `id` was seen before; otherwise remembers it.
    fn first_time(&mut self, id: &str) -> bool {
        if self.ids.contains(id) {
            return false;
        }
        if self.order.len() == REMEMBERED {
            if let Some(old) = self.order.pop_front() {
                self.ids.remove(&old);
            }
        }
        self.order.push_back(id.to_owned());
        self.ids.insert(id.to_owned());
        true
    }
}

/// Checks deliveries; one per server.
#[derive(Debug)]
pub struct Webhooks {
    secret: Option<Vec<u8>>,
    seen: Mutex<Seen>,
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

impl Webhooks {
    pub fn new(secret: Option<Vec<u8>>) -> Webhooks {
        Webhooks {
            secret,
            seen: Mutex::new(Seen::default()),
        }
    }

    /// Judge one delivery. An `Accepted` reply means: run a pass.
    pub fn handle(&self, headers: &HeaderMap, body: &[u8]) -> Reply {
        let Some(secret) = &self.secret else {
            return Reply::new(
                Outcome::Unconfigured,
                StatusCode::NOT_FOUND,
                "webhooks are off: start gitfleet serve with --webhook-secret-file",
            );
        };
        let Some(signature) = header(headers, "x-hub-signature-256") else {
            return Reply::new(
                Outcome::BadSignature,
                StatusCode::UNAUTHORIZED,
                "missing X-Hub-Signature-256 header",
            );
        };
        if !signature_matches(secret, body, signature) {
            return Reply::new(
                Outcome::BadSignature,
                StatusCode::UNAUTHORIZED,
                "X-Hub-Signature-256 does not match the body under the configured secret",
            );
        }
        let Some(event) = header(headers, "x-github-event") else {
            return Reply::new(
                Outcome::Malformed,
                StatusCode::BAD_REQUEST,
                "missing X-GitHub-Event header",
            );
        };
        let Some(delivery) = header(headers, "x-github-delivery") else {
            return Reply::new(
                Outcome::Malformed,
                StatusCode::BAD_REQUEST,
                "missing X-GitHub-Delivery header",
            );
        };
        // GitHub's ids are GUIDs; a bound keeps the remembered set small.
        if delivery.is_empty()
            || delivery.len() > MAX_DELIVERY_ID
            || !delivery
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Reply::new(
                Outcome::Malformed,
                StatusCode::BAD_REQUEST,
                format!(
                    "X-GitHub-Delivery must be 1 to {MAX_DELIVERY_ID} letters, digits or dashes"
                ),
            );
        }
        let wanted = matches!(
            event,
            "ping" | "push" | "pull_request" | "pull_request_review"
        );
        if wanted {
            if let Err(why) = check_shape(event, body) {
                return Reply::new(Outcome::Malformed, StatusCode::BAD_REQUEST, why);
            }
        }
        // Remembered only once it checks out: a malformed delivery that
        // GitHub sends again is judged again.
        let first = self
            .seen
            .lock()
            .map(|mut s| s.first_time(delivery))
            .unwrap_or(true);
        if !first {
            return Reply::new(
                Outcome::Duplicate,
                StatusCode::OK,
                format!("delivery {delivery} was handled already"),
            );
        }
        match event {
            "ping" => Reply::new(Outcome::Ping, StatusCode::OK, "pong"),
            _ if wanted => Reply::new(
                Outcome::Accepted,
                StatusCode::ACCEPTED,
                format!("{event} accepted; a reconcile pass is queued"),
            ),
            other => Reply::new(
                Outcome::Ignored,
                StatusCode::ACCEPTED,
                format!("{other} events are not used; ignored"),
            ),
        }
    }
}

/// The fields of each event the reconciler relies on, with a message
/// naming the first one missing.
fn check_shape(event: &str, body: &[u8]) -> Result<(), String> {
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        format!(
            "{event} payload is not JSON: {e} (is the webhook's content type application/json?)"
        )
    })?;
    let has = |path: &[&str]| {
        let mut v = &value;
        for p in path {
            match v.get(p) {
                Some(next) => v = next,
                None => return false,
            }
        }
        !v.is_null()
    };
    let needed: &[&[&str]] = match event {
        "ping" => &[&["zen"]],
        "push" => &[&["ref"], &["after"], &["repository", "full_name"]],
        "pull_request" => &[&["action"], &["number"], &["pull_request", "head", "sha"]],
        "pull_request_review" => &[
            &["action"],
            &["review", "state"],
            &["pull_request", "number"],
        ],
        _ => &[],
    };
    for path in needed {
        if !has(path) {
            return Err(format!("{event} payload has no `{}`", path.join(".")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use proptest::prelude::*;

    const SECRET: &[u8] = b"It's a Secret to Everybody";

    fn headers(event: &str, delivery: &str, signature: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-github-event", HeaderValue::from_str(event).unwrap());
        h.insert(
            "x-github-delivery",
            HeaderValue::from_str(delivery).unwrap(),
        );
        if let Some(s) = signature {
            h.insert("x-hub-signature-256", HeaderValue::from_str(s).unwrap());
        }
        h
    }

    fn push_body() -> Vec<u8> {
        br#"{"ref":"refs/heads/main","after":"0123","repository":{"full_name":"acme/fleet"}}"#
            .to_vec()
    }

    #[test]
    fn githubs_documented_example_signature_matches() {
        // From GitHub's "Validating webhook deliveries".
        let sig = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert!(signature_matches(SECRET, b"Hello, World!", sig));
        assert_eq!(sign(SECRET, b"Hello, World!"), sig);
        assert!(!signature_matches(SECRET, b"Hello, World?", sig));
        assert!(!signature_matches(b"other", b"Hello, World!", sig));
        assert!(!signature_matches(SECRET, b"Hello, World!", &sig[7..]));
        assert!(!signature_matches(SECRET, b"Hello, World!", "sha256=zz"));
        assert!(!signature_matches(SECRET, b"Hello, World!", "sha1=757107"));
    }

    #[test]
    fn a_signed_push_is_accepted_once_then_seen_as_a_duplicate() {
        let w = Webhooks::new(Some(SECRET.to_vec()));
        let body = push_body();
        let h = headers("push", "d-1", Some(&sign(SECRET, &body)));
        let first = w.handle(&h, &body);
        assert_eq!(first.outcome, Outcome::Accepted, "{first:?}");
        assert_eq!(first.status, StatusCode::ACCEPTED);
        let again = w.handle(&h, &body);
        assert_eq!(again.outcome, Outcome::Duplicate);
        assert_eq!(again.status, StatusCode::OK);
    }

    #[test]
    fn unsigned_or_missigned_deliveries_are_refused_and_not_remembered() {
        let w = Webhooks::new(Some(SECRET.to_vec()));
        let body = push_body();
        let none = w.handle(&headers("push", "d-2", None), &body);
        assert_eq!(
            (none.outcome, none.status),
            (Outcome::BadSignature, StatusCode::UNAUTHORIZED)
        );
        let wrong = w.handle(&headers("push", "d-2", Some(&sign(b"guess", &body))), &body);
        assert_eq!(wrong.outcome, Outcome::BadSignature);
        // The id was not burnt by the forgeries.
        let real = w.handle(&headers("push", "d-2", Some(&sign(SECRET, &body))), &body);
        assert_eq!(real.outcome, Outcome::Accepted);
    }

    #[test]
    fn without_a_secret_every_delivery_is_refused() {
        let w = Webhooks::new(None);
        let body = push_body();
        let r = w.handle(&headers("push", "d", Some(&sign(SECRET, &body))), &body);
        assert_eq!(
            (r.outcome, r.status),
            (Outcome::Unconfigured, StatusCode::NOT_FOUND)
        );
    }

    #[test]
    fn malformed_payloads_get_a_400_naming_the_field() {
        let w = Webhooks::new(Some(SECRET.to_vec()));
        let check = |event: &str, body: &[u8]| {
            let r = w.handle(
                &headers(
                    event,
                    &format!("m-{}", body.len()),
                    Some(&sign(SECRET, body)),
                ),
                body,
            );
            assert_eq!(r.outcome, Outcome::Malformed, "{r:?}");
            assert_eq!(r.status, StatusCode::BAD_REQUEST);
            r.message
        };
        assert!(check("push", b"not json").starts_with("push payload is not JSON"));
        assert_eq!(
            check("pull_request", br#"{"action":"opened","number":3}"#),
            "pull_request payload has no `pull_request.head.sha`"
        );
        assert_eq!(
            check(
                "pull_request_review",
                br#"{"action":"submitted","pull_request":{"number":1}}"#
            ),
            "pull_request_review payload has no `review.state`"
        );
    }

    #[test]
    fn delivery_ids_must_be_short_guid_like_strings() {
        let w = Webhooks::new(Some(SECRET.to_vec()));
        let body = push_body();
        let sig = sign(SECRET, &body);
        for bad in ["", "a b", &"x".repeat(65)] {
            let mut h = headers("push", "x", Some(&sig));
            h.insert("x-github-delivery", HeaderValue::from_str(bad).unwrap());
            let r = w.handle(&h, &body);
            assert_eq!(r.outcome, Outcome::Malformed, "{bad:?}");
        }
        let guid = "72d3162e-cc78-11e3-81ab-4c9367dc0958";
        let r = w.handle(&headers("push", guid, Some(&sig)), &body);
        assert_eq!(r.outcome, Outcome::Accepted);
    }

    #[test]
    fn ping_answers_pong_and_other_events_are_ignored() {
        let w = Webhooks::new(Some(SECRET.to_vec()));
        let body = br#"{"zen":"Keep it logically awesome."}"#;
        let r = w.handle(&headers("ping", "p", Some(&sign(SECRET, body))), body);
        assert_eq!((r.outcome, r.message.as_str()), (Outcome::Ping, "pong"));
        let body = br#"{"action":"created"}"#;
        let r = w.handle(&headers("issues", "i", Some(&sign(SECRET, body))), body);
        assert_eq!(
            (r.outcome, r.status),
            (Outcome::Ignored, StatusCode::ACCEPTED)
        );
    }

    #[test]
    fn old_delivery_ids_are_forgotten_past_the_bound() {
        let mut seen = Seen::default();
        for i in 0..=REMEMBERED {
            assert!(seen.first_time(&i.to_string()));
        }
        assert_eq!(seen.ids.len(), REMEMBERED);
        // The first was evicted; the last is still known.
        assert!(seen.first_time("0"));
        assert!(!seen.first_time(&REMEMBERED.to_string()));
    }

    proptest! {
        #[test]
        fn arbitrary_deliveries_never_panic(
            event in "[a-z_]{0,24}",
            body in proptest::collection::vec(any::<u8>(), 0..512),
            signed in any::<bool>(),
        ) {
            let w = Webhooks::new(Some(SECRET.to_vec()));
            let sig = if signed { sign(SECRET, &body) } else { "sha256=00".to_owned() };
            let mut h = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_str(&event) {
                h.insert("x-github-event", v);
            }
            h.insert("x-github-delivery", HeaderValue::from_static("x"));
            h.insert("x-hub-signature-256", HeaderValue::from_str(&sig).unwrap());
            let r = w.handle(&h, &body);
            prop_assert!(r.status.is_client_error() || r.status.is_success());
            if !signed {
                prop_assert_eq!(r.outcome, Outcome::BadSignature);
            }
        }

        #[test]
        fn arbitrary_json_shaped_pushes_never_panic(body in "\\{(\"[a-z]{1,5}\":(\"[a-z]*\"|[0-9]{1,3}|null|\\{\\}),?){0,4}\\}") {
            let w = Webhooks::new(Some(SECRET.to_vec()));
            let body = body.into_bytes();
            let h = headers("push", "x", Some(&sign(SECRET, &body)));
            let r = w.handle(&h, &body);
            prop_assert!(matches!(r.outcome, Outcome::Accepted | Outcome::Malformed));
        }
    }
}
