//! The leader's notifier: after each pass it writes, the rollout changes
//! the state branch gained since the last round and the conditions the
//! fleet is in (stale nodes, drift) go into the outbox in the store
//! (`notify/ledger.json`, `policy::notify`), and the outbox's due
//! deliveries go out in a task of their own, so a slow or failing receiver
//! never holds a pass.
//!
//! Delivery is at least once: the outbox is written before anything is
//! sent and cleared after, so a leader killed in between leaves the sends
//! to the next one, which makes them again under the same ids. Conditional
//! writes keep two replicas from undoing each other's ledger.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use gitfleet_io::store::{ETag, Store, StoreError, Update};
use gitfleet_policy::notify::{self as plan, Attempt};
use gitfleet_schemas::keys;
use gitfleet_schemas::notify::{
    notification_id, Cursor, Given, Notification, Notify, NotifyKind, NotifyLedger, NotifyTarget,
    LEDGER_FORMAT,
};
use gitfleet_schemas::state::RolloutState;
use hmac::{Hmac, Mac as _};
use sha2::Sha256;

use crate::git::{GitError, Mirror, WalkEnd};

/// How far back a round looks for the last commit it notified: past it
/// (a branch rewritten otherwise than by compaction), the round starts
/// from the tip and says so.
const HISTORY_LIMIT: usize = 500;

/// How far back the first round (no ledger yet) tells rollout events.
const FIRST_LOOK_BACK: chrono::Duration = chrono::Duration::minutes(10);

/// How far back any round tells them (a fleet that had no receivers for a
/// while is not told all that happened meanwhile).
const CURSOR_LOOK_BACK: chrono::Duration = chrono::Duration::hours(24);

/// After a failed direct delivery (while passes fail), the next try.
const DIRECT_RETRY: chrono::Duration = chrono::Duration::seconds(30);

/// The most deliveries one sending task makes.
const BATCH: usize = 64;

/// How long one delivery may take.
const SEND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The largest ledger read back: an outbox this large means receivers have
/// been failing for hours.
const MAX_LEDGER_BYTES: u64 = 32 << 20;

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("reading or writing {key}")]
    Store {
        key: &'static str,
        #[source]
        source: Box<StoreError>,
    },
    #[error("{key} in the store is not a notification ledger")]
    Ledger {
        key: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("reading the state branch's history")]
    History(#[source] Box<GitError>),
}

/// Deliveries made, failed and given up since the process started.
#[derive(Debug, Default)]
pub struct NotifyTotals {
    pub delivered: AtomicU64,
    pub failed: AtomicU64,
    pub given_up: AtomicU64,
    /// Deliveries waiting in the outbox after the last round.
    pub waiting: AtomicU64,
}

/// What one round put in the outbox and started sending.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Round {
    pub queued: usize,
    pub sending: usize,
}

/// The ledger as this replica last read or wrote it.
#[derive(Clone, Debug)]
struct Held {
    ledger: NotifyLedger,
    /// `None`: there is no ledger in the store yet.
    etag: Option<ETag>,
}

/// What a sending task did: the ledger after it, when it could write it.
#[derive(Debug)]
struct Sent {
    held: Option<Held>,
}

pub struct Notifier {
    store: Store,
    client: reqwest::Client,
    held: Option<Held>,
    sending: Option<tokio::task::JoinHandle<Sent>>,
    /// Environment → when its channel manifest expires and how long the
    /// environment's manifests live, as last read or published.
    manifests: BTreeMap<String, (DateTime<Utc>, chrono::Duration)>,
    /// The fleet and receivers of the last round this replica led: whom
    /// to tell while passes fail.
    last: Option<(String, Vec<Notify>)>,
    /// No direct delivery before this (after one failed).
    direct_after: Option<DateTime<Utc>>,
    /// When the passes began failing (this outage).
    failing_since: Option<DateTime<Utc>>,
    /// `receiver id` of failure notifications delivered while passes fail
    /// (no outbox then: the store may be what fails).
    told_directly: Arc<Mutex<BTreeSet<String>>>,
    /// The direct deliveries in flight, and whether one of them failed.
    direct: Option<tokio::task::JoinHandle<()>>,
    direct_failed: Arc<std::sync::atomic::AtomicBool>,
    /// A node unheard from for longer is stale (serve's `--stale-after`).
    pub stale_after: chrono::Duration,
    pub totals: Arc<NotifyTotals>,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field("held", &self.held.is_some())
            .field("sending", &self.sending.is_some())
            .finish_non_exhaustive()
    }
}

/// The inputs of one round.
#[derive(Debug)]
pub struct RoundInput<'a> {
    pub fleet: &'a str,
    pub receivers: &'a [Notify],
    /// What the fleet's status says now ([`plan::condition_notifications`]).
    pub conditions: Vec<Notification>,
    /// When this replica's lease ends: nothing is sent after.
    pub until: DateTime<Utc>,
    pub now: DateTime<Utc>,
}

impl Notifier {
    pub fn new(store: Store) -> Notifier {
        let client = reqwest::Client::builder()
            .timeout(SEND_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("gitfleet/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_default();
        Notifier {
            store,
            client,
            held: None,
            sending: None,
            manifests: BTreeMap::new(),
            last: None,
            direct_after: None,
            failing_since: None,
            told_directly: Arc::default(),
            direct: None,
            direct_failed: Arc::default(),
            stale_after: chrono::Duration::minutes(3),
            totals: Arc::default(),
        }
    }

    /// Another replica leads: what this one held of the ledger may be
    /// overtaken by the time it leads again.
    pub fn follow(&mut self) {
        if let Some(task) = self.sending.take() {
            // What it would record is the old leader's view: dropped (a
            // delivery it made is made again, under the same id).
            task.abort();
        }
        if let Some(task) = self.direct.take() {
            task.abort();
        }
        self.held = None;
        self.last = None;
    }

    /// `environment`'s channel manifest expires at `expires` (read, or
    /// just published); its manifests live `freshness`.
    pub fn manifest(
        &mut self,
        environment: &str,
        expires: DateTime<Utc>,
        freshness: chrono::Duration,
    ) {
        self.manifests
            .insert(environment.to_owned(), (expires, freshness));
    }

    /// A pass failed (`store_error`: how, when the store is what failed).
    /// While passes fail there is no outbox to trust: the replica that led
    /// last tells its receivers directly, from a task of its own, that the
    /// store is unreachable and which manifests are close to expiry, each
    /// id once while the process lives.
    pub fn failed(&mut self, store_error: Option<String>, now: DateTime<Utc>) {
        let Some((fleet, receivers)) = &self.last else {
            return;
        };
        let since = *self.failing_since.get_or_insert(now);
        if let Some(task) = &self.direct {
            if !task.is_finished() {
                return;
            }
            self.direct = None;
            // A failed delivery is tried again after a while, not at every
            // failed pass.
            if self.direct_failed.swap(false, Ordering::Relaxed) {
                self.direct_after = Some(now + DIRECT_RETRY);
            }
        }
        if self.direct_after.is_some_and(|t| now < t) {
            return;
        }
        let Some(error) = store_error else {
            // The store answers: another replica may lead and re-sign, and
            // its outbox tells what there is to tell.
            return;
        };
        // Nobody can re-sign without the store: this replica's manifests
        // are the fleet's. Each expiry under the id it has, or will have
        // in the outbox, for this occurrence.
        let mut notes = Vec::new();
        for mut n in plan::manifest_notifications(fleet, &self.manifests, now) {
            let key = n.id.clone();
            let holding = self.held.as_mut().map(|h| &mut h.ledger.holding);
            match holding {
                Some(h) if h.contains_key(&key) => continue,
                Some(h) => {
                    n.id = notification_id(&[&key, &since.to_rfc3339()]);
                    h.insert(key, n.id.clone());
                }
                None => n.id = notification_id(&[&key, &since.to_rfc3339()]),
            }
            notes.push(n);
        }
        notes.push(plan::store_unreachable(fleet, since, &error));
        let told = self
            .told_directly
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let sends: Vec<(Notify, Notification)> = notes
            .iter()
            .flat_map(|n| {
                receivers
                    .iter()
                    .filter(|r| r.wants(n) && !told.contains(&direct_key(r, n)))
                    .map(|r| (r.clone(), n.clone()))
            })
            .collect();
        if sends.is_empty() {
            return;
        }
        let (client, told, totals, failed) = (
            self.client.clone(),
            Arc::clone(&self.told_directly),
            Arc::clone(&self.totals),
            Arc::clone(&self.direct_failed),
        );
        self.direct_after = None;
        self.direct = Some(tokio::spawn(async move {
            for (r, n) in sends {
                match deliver(&client, &r, &n).await {
                    Ok(()) => {
                        tracing::info!(receiver = %r.name.value, id = %n.id, kind = %n.kind, "notification delivered while passes fail");
                        totals.delivered.fetch_add(1, Ordering::Relaxed);
                        told.lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(direct_key(&r, &n));
                    }
                    Err(why) => {
                        failed.store(true, Ordering::Relaxed);
                        totals.failed.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(receiver = %r.name.value, id = %n.id, error = %why, "notification not delivered; trying again in 30 s if passes still fail");
                    }
                }
            }
        }));
    }

    /// Which condition kinds any receiver hears (computing them needs the
    /// fleet's view).
    pub fn wants_conditions(receivers: &[Notify]) -> bool {
        receivers.iter().any(|r| {
            r.events.is_empty()
                || r.events
                    .iter()
                    .any(|k| matches!(k.value, NotifyKind::NodeStale | NotifyKind::DriftFound))
        })
    }

    /// One round: collect what finished sending, queue what is new, and
    /// start sending what is due. Leader only.
    pub async fn round(
        &mut self,
        mirror: &Mirror,
        input: RoundInput<'_>,
    ) -> Result<Round, NotifyError> {
        if let Some(task) = &self.sending {
            if !task.is_finished() {
                tracing::debug!("notifications still sending; this round waits");
                return Ok(Round::default());
            }
        }
        if let Some(task) = self.sending.take() {
            match task.await {
                Ok(sent) => self.held = sent.held,
                Err(e) => {
                    tracing::error!(error = %e, "the notification task failed");
                    self.held = None;
                }
            }
        }
        // Passes work again: failures are told afresh next time.
        if let Some(task) = self.direct.take() {
            task.abort();
        }
        self.failing_since = None;
        self.direct_after = None;
        self.told_directly
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        if input.receivers.is_empty() {
            self.last = None;
            return Ok(Round::default());
        }
        self.last = Some((input.fleet.to_owned(), input.receivers.to_vec()));
        let mut held = match self.held.take() {
            Some(held) => held,
            None => self.read().await?,
        };
        let before = held.ledger.clone();
        let mut notes = rollout_events(mirror, input.fleet, &mut held.ledger, input.now)?;
        let mut conditions = input.conditions;
        conditions.extend(plan::manifest_notifications(
            input.fleet,
            &self.manifests,
            input.now,
        ));
        notes.extend(plan::new_conditions(
            &mut held.ledger,
            conditions,
            input.now,
        ));
        let queued = plan::enqueue(&mut held.ledger, input.receivers, &notes);
        // Deliveries of receivers that left fleet.kdl go now.
        let dropped = plan::record(&mut held.ledger, input.receivers, &[], input.now);
        for o in &dropped.given_up {
            tracing::warn!(receiver = %o.receiver, id = %o.notification.id, "no such receiver any more; its delivery is dropped");
        }
        // A cursor that moved over commits with nothing to tell need not
        // be written: walking them again tells nothing either.
        let cursor_only = NotifyLedger {
            cursor: before.cursor.clone(),
            ..held.ledger.clone()
        } == before;
        if held.ledger != before && !cursor_only {
            // The outbox is written before anything in it is sent.
            match self.write(&held).await? {
                Some(etag) => {
                    held.etag = Some(etag);
                    gitfleet_io::faults::point("after-outbox");
                }
                None => {
                    tracing::info!(
                        "the notification ledger changed under us; reading it again next round"
                    );
                    return Ok(Round::default());
                }
            }
        }
        self.totals
            .waiting
            .store(held.ledger.outbox.len() as u64, Ordering::Relaxed);
        let mut due = plan::due(&held.ledger, input.receivers, input.now);
        due.truncate(BATCH);
        // Deliveries whose receiver left fleet.kdl go at the next write.
        let sending = due.len();
        if sending > 0 {
            self.sending = Some(tokio::spawn(send_due(
                self.store.clone(),
                self.client.clone(),
                Arc::clone(&self.totals),
                held.clone(),
                input.receivers.to_vec(),
                due,
                input.until,
            )));
        } else {
            self.held = Some(held);
        }
        Ok(Round { queued, sending })
    }

    /// Wait up to `budget` for the deliveries in flight (a one-shot
    /// `gitfleet reconcile` before it exits).
    pub async fn finish(&mut self, budget: std::time::Duration) {
        if let Some(task) = self.sending.take() {
            match tokio::time::timeout(budget, task).await {
                Ok(Ok(sent)) => self.held = sent.held,
                Ok(Err(e)) => tracing::error!(error = %e, "the notification task failed"),
                Err(_) => tracing::warn!(
                    seconds = budget.as_secs(),
                    "notifications still sending; the next run sends what is left"
                ),
            }
        }
    }

    async fn read(&self) -> Result<Held, NotifyError> {
        let key = keys::NOTIFY_LEDGER;
        let object = self
            .store
            .get_at_most(key, MAX_LEDGER_BYTES)
            .await
            .map_err(|source| NotifyError::Store {
                key,
                source: Box::new(source),
            })?;
        Ok(match object {
            None => Held {
                ledger: NotifyLedger {
                    format: LEDGER_FORMAT,
                    ..NotifyLedger::default()
                },
                etag: None,
            },
            Some(o) => match serde_json::from_slice(&o.bytes) {
                Ok(ledger) => Held {
                    ledger,
                    etag: Some(o.etag),
                },
                // Not ours to keep: start over on top of it (the first
                // round tells what happened lately).
                Err(source) => {
                    let e = NotifyError::Ledger { key, source };
                    tracing::error!(error = %gitfleet_io::error_chain(&e), "starting a new notification ledger over it");
                    Held {
                        ledger: NotifyLedger {
                            format: LEDGER_FORMAT,
                            ..NotifyLedger::default()
                        },
                        etag: Some(o.etag),
                    }
                }
            },
        })
    }

    async fn write(&self, held: &Held) -> Result<Option<ETag>, NotifyError> {
        write_ledger(&self.store, held).await
    }
}

async fn write_ledger(store: &Store, held: &Held) -> Result<Option<ETag>, NotifyError> {
    let key = keys::NOTIFY_LEDGER;
    let bytes = serde_json::to_vec_pretty(&held.ledger).unwrap_or_default();
    match store
        .put_if_match(key, Bytes::from(bytes), held.etag.as_ref())
        .await
        .map_err(|source| NotifyError::Store {
            key,
            source: Box::new(source),
        })? {
        Update::Updated { etag } => Ok(Some(etag)),
        Update::Conflict => Ok(None),
    }
}

/// The rollout events of the state commits after the ledger's cursor,
/// oldest first; the cursor moves to the tip. The cursor is recognised by
/// its id, or by its tree and time after `gitfleet state compact` rebuilt
/// it; a
/// cursor compacted away ends the walk at the new root, whose squashed
/// history is not told again. Without a cursor (the first round), the
/// commits of the last [`FIRST_LOOK_BACK`]: a new fleet's first rollout is
/// told, even by a leader that died before its first round, and a fleet
/// that takes up notifications is not told its past. Never more than
/// [`CURSOR_LOOK_BACK`] back.
fn rollout_events(
    mirror: &Mirror,
    fleet: &str,
    ledger: &mut NotifyLedger,
    now: DateTime<Utc>,
) -> Result<Vec<Notification>, NotifyError> {
    let cursor = ledger.cursor.clone();
    let since = now
        - if cursor.is_some() {
            CURSOR_LOOK_BACK
        } else {
            FIRST_LOOK_BACK
        };
    let history = mirror
        .state_history(HISTORY_LIMIT, |commit, tree, time| {
            time < since
                || cursor.as_ref().is_some_and(|c| {
                    commit.to_string() == c.commit || (tree.to_string() == c.tree && time == c.time)
                })
        })
        .map_err(|e| NotifyError::History(Box::new(e)))?;
    let Some((tip, tree, time)) = history.tip else {
        return Ok(Vec::new());
    };
    ledger.cursor = Some(Cursor {
        commit: tip.to_string(),
        tree: tree.to_string(),
        time,
    });
    let mut changes = history.changes;
    match history.end {
        WalkEnd::Limit => {
            tracing::warn!(
                tip = %tip,
                commits = HISTORY_LIMIT,
                "the last commit notified is further back than a walk reads; telling the newest commits' events only"
            );
        }
        // A root reached with a cursor: the cursor was squashed into it.
        WalkEnd::Root if cursor.is_some() => {
            changes.retain(|c| Some(c.commit) != history.last);
        }
        _ => {}
    }
    let mut out = Vec::new();
    for change in changes.iter().rev() {
        let commit = change.commit.to_string();
        for (rollout, before, after) in &change.rollouts {
            let parse = |bytes: &Option<Vec<u8>>| -> Option<RolloutState> {
                let bytes = bytes.as_ref()?;
                match serde_json::from_slice(bytes) {
                    Ok(s) => Some(s),
                    Err(e) => {
                        tracing::warn!(commit = %commit, rollout = %rollout, error = %e, "rollout state does not parse; its events are not told");
                        None
                    }
                }
            };
            out.extend(plan::rollout_notifications(
                fleet,
                &commit,
                rollout,
                parse(before).as_ref(),
                parse(after).as_ref(),
            ));
        }
    }
    Ok(out)
}

/// Send the outbox entries `due` (by index), record the outcomes and
/// write the ledger.
async fn send_due(
    store: Store,
    client: reqwest::Client,
    totals: Arc<NotifyTotals>,
    mut held: Held,
    receivers: Vec<Notify>,
    due: Vec<usize>,
    until: DateTime<Utc>,
) -> Sent {
    let mut outcomes = Vec::with_capacity(due.len());
    for i in due {
        // Never send on a lease that may pass to another replica before
        // the send is done.
        let margin = chrono::Duration::seconds(5)
            + chrono::Duration::from_std(SEND_TIMEOUT).unwrap_or_default();
        if Utc::now() + margin >= until {
            tracing::info!("lease ends; the next leader sends the rest");
            break;
        }
        let Some(o) = held.ledger.outbox.get(i) else {
            continue;
        };
        let Some(receiver) = receivers.iter().find(|r| r.name.value == o.receiver) else {
            continue;
        };
        let attempt = match deliver(&client, receiver, &o.notification).await {
            Ok(()) => {
                tracing::info!(receiver = %o.receiver, id = %o.notification.id, kind = %o.notification.kind, "notification delivered");
                Attempt::Delivered
            }
            Err(why) => {
                tracing::warn!(receiver = %o.receiver, id = %o.notification.id, attempt = o.attempts + 1, error = %why, "notification not delivered; retrying later");
                Attempt::Failed(why)
            }
        };
        outcomes.push((i, attempt));
    }
    if !outcomes.is_empty() {
        gitfleet_io::faults::point("after-send");
    }
    let recorded = plan::record(&mut held.ledger, &receivers, &outcomes, Utc::now());
    let failed = outcomes
        .iter()
        .filter(|(_, a)| matches!(a, Attempt::Failed(_)))
        .count();
    totals
        .delivered
        .fetch_add(recorded.delivered.len() as u64, Ordering::Relaxed);
    totals.failed.fetch_add(failed as u64, Ordering::Relaxed);
    totals
        .given_up
        .fetch_add(recorded.given_up.len() as u64, Ordering::Relaxed);
    for o in &recorded.given_up {
        tracing::error!(receiver = %o.receiver, id = %o.notification.id, kind = %o.notification.kind, attempts = o.attempts, last_error = ?o.last_error, "notification given up");
    }
    totals
        .waiting
        .store(held.ledger.outbox.len() as u64, Ordering::Relaxed);
    match write_ledger(&store, &held).await {
        Ok(Some(etag)) => {
            held.etag = Some(etag);
            Sent { held: Some(held) }
        }
        Ok(None) => {
            tracing::info!("the notification ledger changed while sending; what was sent may be sent again under the same ids");
            Sent { held: None }
        }
        Err(e) => {
            tracing::warn!(error = %gitfleet_io::error_chain(&e), "cannot record the notifications sent; they may be sent again under the same ids");
            Sent { held: None }
        }
    }
}

/// What a direct delivery is remembered by: the receiver and the id.
fn direct_key(r: &Notify, n: &Notification) -> String {
    format!("{} {}", r.name.value, n.id)
}

/// The `X-Gitfleet-Signature-256` header of `body` under `secret`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return String::new();
    };
    mac.update(body);
    let bytes = mac.finalize().into_bytes();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

fn given(g: &Given) -> Result<String, String> {
    match g {
        Given::Value(v) => Ok(v.value.clone()),
        Given::Env(var) => std::env::var(&var.value)
            .map_err(|_| format!("environment variable {} is not set", var.value)),
    }
}

/// One delivery attempt: `Err` says why it failed.
async fn deliver(client: &reqwest::Client, r: &Notify, n: &Notification) -> Result<(), String> {
    let request = match &r.target {
        NotifyTarget::Webhook { url, secret_env } => {
            let url = given(url)?;
            let secret = std::env::var(&secret_env.value)
                .ok()
                .filter(|s| !s.is_empty())
                .ok_or_else(|| {
                    format!(
                        "environment variable {} is not set or empty",
                        secret_env.value
                    )
                })?;
            let body = serde_json::to_vec(n).map_err(|e| e.to_string())?;
            client
                .post(url)
                .header("content-type", "application/json")
                .header("x-gitfleet-event", n.kind.as_str())
                .header("x-gitfleet-delivery", &n.id)
                .header(
                    "x-gitfleet-signature-256",
                    signature(secret.as_bytes(), &body),
                )
                .body(body)
        }
        NotifyTarget::Slack { url } => {
            let url = given(url)?;
            let text = format!("[{}] {}", n.fleet, n.summary);
            let body = serde_json::to_vec(&serde_json::json!({ "text": text }))
                .map_err(|e| e.to_string())?;
            client
                .post(url)
                .header("content-type", "application/json")
                .body(body)
        }
    };
    // Errors leave the URL out: a Slack URL is itself the secret.
    let response = tokio::time::timeout(SEND_TIMEOUT, request.send())
        .await
        .map_err(|_| format!("no answer in {} s", SEND_TIMEOUT.as_secs()))?
        .map_err(|e| gitfleet_io::error_chain(&e.without_url()))?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("HTTP {status}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_hex_hmac_sha256_like_githubs() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
