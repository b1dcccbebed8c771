//! A webhook receiver for the notification tests: an HTTP server on a free
//! loopback port that records every POST (headers and body) and answers
//! 503 to the first few, as a receiver that is down for a while would.
//! Stopped (and its thread joined) when dropped.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, Mac as _};
use sha2::Sha256;

/// One request the receiver got.
#[derive(Clone, Debug)]
pub struct Received {
    pub path: String,
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
    /// What it answered.
    pub status: u16,
}

impl Received {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// Whether `X-Gitfleet-Signature-256` is the HMAC-SHA256 of the body
    /// under `secret`, computed here independently of gitfleet.
    pub fn signed_with(&self, secret: &[u8]) -> bool {
        let Some(header) = self.headers.get("x-gitfleet-signature-256") else {
            return false;
        };
        let Some(hex) = header.strip_prefix("sha256=") else {
            return false;
        };
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
            return false;
        };
        mac.update(&self.body);
        let want: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        want == hex
    }
}

#[derive(Debug, Default)]
struct Shared {
    fail_first: usize,
    received: Mutex<Vec<Received>>,
}

#[derive(Debug)]
pub struct Receiver {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    shared: Arc<Shared>,
    _server: crate::app_thread::AppThread,
}

async fn take(
    State(shared): State<Arc<Shared>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let mut received = shared.received.lock().unwrap_or_else(|p| p.into_inner());
    let status = if received.len() < shared.fail_first {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::NO_CONTENT
    };
    received.push(Received {
        path: uri.path().to_owned(),
        headers: headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    v.to_str().unwrap_or_default().to_owned(),
                )
            })
            .collect(),
        body: body.to_vec(),
        status: status.as_u16(),
    });
    status
}

impl Receiver {
    /// Serve, answering 503 to the first `fail_first` requests.
    pub fn start(fail_first: usize) -> Receiver {
        let shared = Arc::new(Shared {
            fail_first,
            received: Mutex::default(),
        });
        let app = axum::Router::new()
            .fallback(axum::routing::post(take))
            .with_state(Arc::clone(&shared));
        let server = crate::app_thread::AppThread::start(app);
        Receiver {
            url: server.url(),
            shared,
            _server: server,
        }
    }

    /// Every request so far, in order.
    pub fn received(&self) -> Vec<Received> {
        self.shared
            .received
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The requests it answered with success.
    pub fn delivered(&self) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| (200..300).contains(&r.status))
            .collect()
    }
}
