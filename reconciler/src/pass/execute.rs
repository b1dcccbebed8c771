//! Carrying out a `PassPlan`: its writes in the order `PassPlan::writes`
//! gives (bundles, then the state commit, then the manifests, then
//! GitHub), each only while this replica holds the leader lease, which is
//! taken with the real clock just before the first write and checked again
//! before every one. A pass that stalled past its lease stops writing
//! instead of racing the new leader; whatever it wrote, the next pass
//! decides again from it.

use chrono::{DateTime, Duration, Utc};
use gitfleet_io::store::{Create, Update};
use gitfleet_policy::pass::Write;
use gitfleet_schemas::trust::Document as _;

use super::lease::{self, LeaseOutcome};
use super::{Decided, Done, Outcome, ReconcileError, Reconciler, Written, GITHUB_BUDGET};
use crate::git::{Author, StateCommit};

impl Reconciler {
    /// Carry out `decided`'s plan.
    pub async fn execute(&mut self, decided: Decided) -> Result<Outcome, ReconcileError> {
        let Decided {
            plan,
            observed,
            promotions,
            manifest_etags,
            mut phases,
        } = decided;
        let until = match lease::acquire(
            &self.observer.store,
            &self.holder,
            self.lease_ttl,
            Utc::now(),
        )
        .await?
        {
            LeaseOutcome::Leader { until, .. } => until,
            LeaseOutcome::Follower { holder, until } => {
                tracing::info!(leader = %holder, until = %until, "another replica leads; not writing");
                return Ok(Outcome {
                    plan,
                    observed,
                    done: Done::Follower { leader: holder },
                    phases: phases.done,
                });
            }
        };
        let mut written = Written {
            lease_until: Some(until),
            ..Written::default()
        };
        let mut statuses = Vec::new();
        let mut promotions_asked = std::collections::BTreeMap::new();
        let mut phase = "bundles";
        let mut bundles_done = false;
        for w in plan.writes() {
            if !bundles_done && !matches!(w, Write::Upload(_)) {
                bundles_done = true;
                gitfleet_io::faults::point("after-bundles");
            }
            // Close the phase each kind of write belongs to.
            let next = match w {
                Write::Upload(_) => "bundles",
                Write::Remove(_) | Write::Commit(_) => "commit",
                Write::Publish(_) => "publish",
                Write::Status(_) | Write::Promote(..) => "github",
            };
            if next != phase {
                end_phases(&mut phases, phase, next);
                phase = next;
            }
            match w {
                Write::Upload(u) => {
                    still_leader(until)?;
                    match self
                        .observer
                        .store
                        .put_create(&u.key, u.built.bytes.clone().into())
                        .await?
                    {
                        Create::Created => written
                            .bundles_uploaded
                            .push(u.built.reference.digest.clone()),
                        Create::Exists { identical: true } => {}
                        Create::Exists { identical: false } => {
                            // Content-addressed: other bytes under this
                            // name were not written by a reconciler.
                            self.refused.insert(u.built.reference.digest.clone());
                            return Err(ReconcileError::BundleConflict { key: u.key.clone() });
                        }
                    }
                    self.stored.insert(u.built.reference.digest.clone());
                }
                Write::Remove(key) => {
                    still_leader(until)?;
                    self.observer.store.delete(key).await?;
                    tracing::info!(key = %key, "removed a departed node's object");
                }
                Write::Commit(c) => {
                    still_leader(until)?;
                    if let StateCommit::Committed { oid } = self.observer.mirror.commit_state(
                        &c.files,
                        &c.message,
                        &Author::default(),
                    )? {
                        written.state_commit = Some(oid.to_string());
                        gitfleet_io::faults::point("after-commit");
                    }
                }
                Write::Publish(p) => {
                    still_leader(until)?;
                    let mut envelope = p.manifest.envelope();
                    envelope
                        .sign(&self.online_key)
                        .map_err(|reason| ReconcileError::Sign {
                            environment: p.environment.clone(),
                            reason,
                        })?;
                    // Over the manifest the pass observed, and nothing else.
                    let etag = manifest_etags.get(&p.environment);
                    match self
                        .observer
                        .store
                        .put_if_match(&p.key, envelope.to_json().into(), etag)
                        .await?
                    {
                        Update::Updated { .. } => {
                            written
                                .manifests
                                .push((p.environment.clone(), p.manifest.serial));
                            if let Some((_, freshness)) = plan
                                .rules
                                .rules
                                .iter()
                                .find(|(env, _)| *env == p.environment)
                                .map(|(env, f)| {
                                    (env, gitfleet_policy::pass::freshness(&f.environment))
                                })
                            {
                                self.notifier.manifest(
                                    &p.environment,
                                    p.manifest.expires,
                                    freshness,
                                );
                            }
                            gitfleet_io::faults::point("after-manifest");
                        }
                        Update::Conflict => {
                            tracing::warn!(environment = %p.environment, "channel manifest changed under us; next pass retries");
                        }
                    }
                }
                Write::Status(s) => statuses.push(s.clone()),
                Write::Promote(env, ask) => {
                    promotions_asked.insert(env.to_owned(), ask.clone());
                }
            }
        }
        if !bundles_done {
            gitfleet_io::faults::point("after-bundles");
        }
        if phase != "github" {
            end_phases(&mut phases, phase, "github");
        }
        if self.github.is_some() {
            // GitHub's writes, each under the lease too.
            if still_leader(until).is_ok() {
                if let Some(gh) = self.github_client() {
                    if tokio::time::timeout(GITHUB_BUDGET, gh.report(&statuses))
                        .await
                        .is_err()
                    {
                        tracing::warn!(
                            seconds = GITHUB_BUDGET.as_secs(),
                            "posting commit statuses took too long; the next pass goes on"
                        );
                    }
                }
            }
            if still_leader(until).is_ok() {
                if let Some(gh) = self.github_client.as_mut() {
                    let promote = gh.promote(
                        &plan.rules.rules,
                        &self.observer.mirror,
                        observed.commit,
                        &promotions.files,
                        &promotions_asked,
                    );
                    if tokio::time::timeout(GITHUB_BUDGET, promote).await.is_err() {
                        tracing::warn!(
                            seconds = GITHUB_BUDGET.as_secs(),
                            "promotion pull requests took too long; the next pass goes on"
                        );
                    }
                }
            }
            if still_leader(until).is_ok() {
                let asks = self.rotation_asks(&observed);
                if let Some(gh) = self.github_client.as_mut() {
                    let rotate = gh.rotate_keys(&self.observer.mirror, observed.commit, &asks);
                    if tokio::time::timeout(GITHUB_BUDGET, rotate).await.is_err() {
                        tracing::warn!(
                            seconds = GITHUB_BUDGET.as_secs(),
                            "key rotation pull requests took too long; the next pass goes on"
                        );
                    }
                }
            }
            if still_leader(until).is_ok()
                && tokio::time::timeout(
                    GITHUB_BUDGET,
                    self.previews(observed.commit, &observed.checked, &plan.rules.rules),
                )
                .await
                .is_err()
            {
                tracing::warn!(
                    seconds = GITHUB_BUDGET.as_secs(),
                    "plan previews took too long; the next pass goes on"
                );
            }
            phases.end("github");
        }
        Ok(Outcome {
            plan,
            observed,
            done: Done::Wrote(written),
            phases: phases.done,
        })
    }
}

impl Reconciler {
    /// The key rotation pull requests the verified reports ask for: each
    /// node's request, over its node file at the observed commit.
    fn rotation_asks(
        &self,
        observed: &super::observe::Observed,
    ) -> std::collections::BTreeMap<String, gitfleet_policy::rotation::RotationAsk> {
        let requests: std::collections::BTreeMap<String, String> = observed
            .reports
            .iter()
            .filter_map(|(node, r)| {
                let next = r.wireguard.as_ref()?.next_public_key.clone()?;
                Some((node.clone(), next))
            })
            .collect();
        if requests.is_empty() {
            return Default::default();
        }
        let mirror = &self.observer.mirror;
        gitfleet_policy::rotation::wanted(&observed.checked.checked.model, &requests, |path| {
            mirror.blob_at(observed.commit, path).ok().flatten()
        })
    }
}

/// Close `from` and any phases between it and `to` that had no writes,
/// so every pass reports the same phases in the same order.
fn end_phases(phases: &mut super::Phases, from: &'static str, to: &'static str) {
    const ORDER: [&str; 4] = ["bundles", "commit", "publish", "github"];
    let start = ORDER.iter().position(|p| *p == from).unwrap_or(0);
    let stop = ORDER.iter().position(|p| *p == to).unwrap_or(ORDER.len());
    for p in &ORDER[start..stop] {
        phases.end(p);
    }
}

/// Refuse to write once our lease is about to end.
pub(super) fn still_leader(until: DateTime<Utc>) -> Result<(), ReconcileError> {
    let margin = Duration::seconds(5);
    if Utc::now() + margin >= until {
        return Err(ReconcileError::LeaseLost { until });
    }
    Ok(())
}
