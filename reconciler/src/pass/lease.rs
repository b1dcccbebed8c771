//! The leader lease: at most one reconciler acts at a time.
//!
//! `leases/reconciler.json` names the holder, until when, and a generation
//! that grows by one on every change of holder (a fencing token: never goes
//! backwards). Every change is a compare-and-swap on the object's etag: it is
//! created only when absent, renewed only by its holder, and taken over only
//! once expired by the caller's clock. A leader must stop acting at `until`
//! (less the clock skew it tolerates) unless it has renewed by then.
//!
//! The time is a parameter: the caller reads the clock, tests move it.

use std::fmt;

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use serde_json::{json, Map, Value};

use gitfleet_io::store::{ETag, Store, StoreError, Update};

pub const LEASE_KEY: &str = gitfleet_schemas::keys::LEASE;

/// How many times a lost compare-and-swap is re-read and retried.
const ATTEMPTS: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("lease `{key}` in `{url}` is not a lease document: {reason}")]
    Corrupt {
        url: String,
        key: &'static str,
        reason: String,
    },
    #[error("lease holder id is empty")]
    EmptyHolder,
    #[error("lease ttl {ttl} is not positive")]
    Ttl { ttl: TimeDelta },
    #[error("lease `{key}` in `{url}` changed under us {attempts} times in a row")]
    Contended {
        url: String,
        key: &'static str,
        attempts: usize,
    },
}

/// Who leads after an `acquire`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseOutcome {
    /// We hold the lease until `until` (as written in the store).
    Leader {
        generation: u64,
        until: DateTime<Utc>,
    },
    Follower {
        holder: String,
        until: DateTime<Utc>,
    },
}

impl fmt::Display for LeaseOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LeaseOutcome::Leader { generation, until } => {
                write!(f, "leader (generation {generation}) until {until}")
            }
            LeaseOutcome::Follower { holder, until } => {
                write!(f, "follower: {holder} leads until {until}")
            }
        }
    }
}

/// The lease document. TODO: this format belongs in `schemas` (versioned,
/// with a JSON Schema) with `#[serde(deny_unknown_fields)]`; until it moves,
/// `decode` refuses unknown and missing fields by hand.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Lease {
    holder: String,
    expires: DateTime<Utc>,
    generation: u64,
}

impl Lease {
    fn encode(&self) -> Bytes {
        let doc = json!({
            "holder": self.holder,
            // AutoSi keeps every digit: what is read back is what was meant.
            "expires": self.expires.to_rfc3339_opts(SecondsFormat::AutoSi, true),
            "generation": self.generation,
        });
        Bytes::from(doc.to_string())
    }

    fn decode(bytes: &[u8]) -> Result<Lease, String> {
        let doc: Map<String, Value> =
            serde_json::from_slice(bytes).map_err(|e| format!("not a JSON object: {e}"))?;
        if let Some(unknown) = doc
            .keys()
            .find(|k| !["holder", "expires", "generation"].contains(&k.as_str()))
        {
            return Err(format!(
                "unknown field `{unknown}`, expected `holder`, `expires` or `generation`"
            ));
        }
        let holder = match doc.get("holder") {
            Some(Value::String(h)) if !h.is_empty() => h.clone(),
            Some(_) => return Err("`holder` is not a non-empty string".to_owned()),
            None => return Err("missing field `holder`".to_owned()),
        };
        let expires = match doc.get("expires") {
            Some(Value::String(s)) => DateTime::parse_from_rfc3339(s)
                .map_err(|e| format!("`expires` {s:?} is not an RFC 3339 time: {e}"))?
                .with_timezone(&Utc),
            Some(_) => return Err("`expires` is not a string".to_owned()),
            None => return Err("missing field `expires`".to_owned()),
        };
        let generation = match doc.get("generation") {
            Some(g) => g
                .as_u64()
                .ok_or_else(|| format!("`generation` {g} is not an unsigned integer"))?,
            None => return Err("missing field `generation`".to_owned()),
        };
        Ok(Lease {
            holder,
            expires,
            generation,
        })
    }
}

/// Takes, renews or observes the lease for `holder` at time `now`; a lease
/// written here lasts `ttl`.
pub async fn acquire(
    store: &Store,
    holder: &str,
    ttl: TimeDelta,
    now: DateTime<Utc>,
) -> Result<LeaseOutcome, LeaseError> {
    if holder.is_empty() {
        return Err(LeaseError::EmptyHolder);
    }
    if ttl <= TimeDelta::zero() {
        return Err(LeaseError::Ttl { ttl });
    }
    let corrupt = |reason: String| LeaseError::Corrupt {
        url: store.url().to_owned(),
        key: LEASE_KEY,
        reason,
    };
    let expires = now + ttl;
    for _ in 0..ATTEMPTS {
        let current = store.get(LEASE_KEY).await?;
        let (next, etag): (Lease, Option<ETag>) = match current {
            None => (
                Lease {
                    holder: holder.to_owned(),
                    expires,
                    generation: 1,
                },
                None,
            ),
            Some(object) => {
                let lease = Lease::decode(&object.bytes).map_err(corrupt)?;
                let generation = if lease.holder == holder {
                    lease.generation
                } else if now < lease.expires {
                    return Ok(LeaseOutcome::Follower {
                        holder: lease.holder,
                        until: lease.expires,
                    });
                } else {
                    lease
                        .generation
                        .checked_add(1)
                        .ok_or_else(|| corrupt("`generation` is at its maximum".to_owned()))?
                };
                (
                    Lease {
                        holder: holder.to_owned(),
                        expires,
                        generation,
                    },
                    Some(object.etag),
                )
            }
        };
        match store
            .put_if_match(LEASE_KEY, next.encode(), etag.as_ref())
            .await?
        {
            Update::Updated { .. } => {
                return Ok(LeaseOutcome::Leader {
                    generation: next.generation,
                    until: next.expires,
                })
            }
            // Someone wrote in between: look again.
            Update::Conflict => continue,
        }
    }
    Err(LeaseError::Contended {
        url: store.url().to_owned(),
        key: LEASE_KEY,
        attempts: ATTEMPTS,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use gitfleet_io::moto::Moto;

    fn t0() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn secs(n: i64) -> TimeDelta {
        TimeDelta::seconds(n)
    }

    #[tokio::test]
    async fn create_renew_follow_take_over() {
        let store = Store::open("memory://").unwrap();
        let ttl = secs(10);
        let now = t0();
        assert_eq!(
            acquire(&store, "a", ttl, now).await.unwrap(),
            LeaseOutcome::Leader {
                generation: 1,
                until: now + ttl
            }
        );
        assert_eq!(
            acquire(&store, "b", ttl, now + secs(5)).await.unwrap(),
            LeaseOutcome::Follower {
                holder: "a".into(),
                until: now + ttl
            }
        );
        // Renewal keeps the generation and moves the expiry.
        assert_eq!(
            acquire(&store, "a", ttl, now + secs(9)).await.unwrap(),
            LeaseOutcome::Leader {
                generation: 1,
                until: now + secs(19)
            }
        );
        assert!(matches!(
            acquire(&store, "b", ttl, now + secs(18)).await.unwrap(),
            LeaseOutcome::Follower { .. }
        ));
        // Expired at exactly `until`: taken over with the next generation.
        assert_eq!(
            acquire(&store, "b", ttl, now + secs(19)).await.unwrap(),
            LeaseOutcome::Leader {
                generation: 2,
                until: now + secs(29)
            }
        );
        assert_eq!(
            acquire(&store, "a", ttl, now + secs(20)).await.unwrap(),
            LeaseOutcome::Follower {
                holder: "b".into(),
                until: now + secs(29)
            }
        );
        let doc = store.get(LEASE_KEY).await.unwrap().unwrap();
        assert_eq!(
            std::str::from_utf8(&doc.bytes).unwrap(),
            r#"{"expires":"2026-01-01T00:00:29Z","generation":2,"holder":"b"}"#
        );
    }

    #[tokio::test]
    async fn a_corrupt_lease_is_refused_not_replaced() {
        for (doc, reason) in [
            (
                r#"{"holder":"a","expires":"2026-01-01T00:00:00Z","generation":1,"x":1}"#,
                "unknown field `x`",
            ),
            (
                r#"{"holder":"a","generation":1}"#,
                "missing field `expires`",
            ),
            (
                r#"{"holder":"","expires":"2026-01-01T00:00:00Z","generation":1}"#,
                "`holder` is not a non-empty string",
            ),
            (
                r#"{"holder":"a","expires":"tomorrow","generation":1}"#,
                "`expires` \"tomorrow\" is not an RFC 3339 time",
            ),
            (
                r#"{"holder":"a","expires":"2026-01-01T00:00:00Z","generation":-1}"#,
                "`generation` -1 is not an unsigned integer",
            ),
            (r#"[]"#, "not a JSON object"),
        ] {
            let store = Store::open("memory://").unwrap();
            store.put_create(LEASE_KEY, Bytes::from(doc)).await.unwrap();
            let err = acquire(&store, "b", secs(10), t0() + secs(3600))
                .await
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with(
                    "lease `leases/reconciler.json` in `memory://` is not a lease document: "
                ) && err.contains(reason),
                "{err}"
            );
            let current = store.get(LEASE_KEY).await.unwrap().unwrap();
            assert_eq!(current.bytes, Bytes::from(doc), "left as it was");
        }
    }

    #[tokio::test]
    async fn bad_arguments() {
        let store = Store::open("memory://").unwrap();
        assert!(matches!(
            acquire(&store, "", secs(1), t0()).await,
            Err(LeaseError::EmptyHolder)
        ));
        assert_eq!(
            acquire(&store, "a", secs(0), t0())
                .await
                .unwrap_err()
                .to_string(),
            "lease ttl P0D is not positive"
        );
    }

    /// A small deterministic generator for the contest schedule.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    /// Two contenders, each with its own store handle, over `rounds` rounds
    /// of a shared clock that moves 6s a round against a 10s ttl. Each round
    /// a contender may stall (skip its turn), so a lease not renewed for one
    /// round has expired at the next and is taken over; when both act they
    /// race. Checks, after every round, that exactly one contender holds an
    /// unexpired leadership, and that generations never go backwards and grow
    /// on every change of leader.
    async fn contest(stores: [Arc<Store>; 2], rounds: usize) {
        let ttl = secs(10);
        let names = ["alpha", "beta"];
        // Per contender: the leadership it believes it holds.
        let mut believed: [Option<(u64, DateTime<Utc>)>; 2] = [None, None];
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let mut highest = 0;
        let mut last_leader = None;
        let mut takeovers = 0;
        let mut races = 0;
        for round in 0..rounds {
            let now = t0() + secs(6 * round as i64);
            let roll = rng.next() % 10;
            // 0-4: both act (a race), 5-7: only alpha, 8-9: only beta.
            let acts = [roll < 8, !(5..8).contains(&roll)];
            if acts == [true, true] {
                races += 1;
            }
            let run = |i: usize| {
                let store = stores[i].clone();
                async move {
                    if acts[i] {
                        Some(acquire(&store, names[i], ttl, now).await.unwrap())
                    } else {
                        None
                    }
                }
            };
            let outcomes = futures::join!(run(0), run(1));
            for (i, outcome) in [outcomes.0, outcomes.1].into_iter().enumerate() {
                match outcome {
                    Some(LeaseOutcome::Leader { generation, until }) => {
                        assert!(
                            generation >= highest,
                            "round {round}: generation {generation} < {highest} seen before"
                        );
                        if last_leader.is_some_and(|l| l != i) {
                            assert!(
                                generation > highest,
                                "round {round}: new leader, same generation"
                            );
                            takeovers += 1;
                        }
                        highest = generation;
                        last_leader = Some(i);
                        believed[i] = Some((generation, until));
                    }
                    Some(LeaseOutcome::Follower { holder, until }) => {
                        assert_ne!(holder, names[i]);
                        assert!(until > now);
                        believed[i] = None;
                    }
                    None => {}
                }
            }
            let leaders: Vec<_> = (0..2)
                .filter(|&i| believed[i].is_some_and(|(_, until)| now < until))
                .map(|i| names[i])
                .collect();
            assert_eq!(
                leaders.len(),
                1,
                "round {round} at {now}: leaders {leaders:?}"
            );
        }
        assert!(
            takeovers >= 5,
            "only {takeovers} takeovers in {rounds} rounds"
        );
        assert!(races >= 20, "only {races} races in {rounds} rounds");
    }

    #[tokio::test]
    async fn contest_in_memory() {
        let store = Arc::new(Store::open("memory://").unwrap());
        contest([store.clone(), store], 100).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn contest_on_files() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().display());
        let stores = [
            Arc::new(Store::open(&url).unwrap()),
            Arc::new(Store::open(&url).unwrap()),
        ];
        contest(stores, 100).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn contest_on_s3() {
        let moto = Moto::start();
        let url = "s3://gitfleet/fleet";
        contest([Arc::new(moto.store(url)), Arc::new(moto.store(url))], 100).await;
    }
}
