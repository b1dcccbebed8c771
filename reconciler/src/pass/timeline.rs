//! What the rollouts went through, from the state branch's history: each
//! rollout's events (`policy::notify`'s reading of each state commit) and,
//! per environment, the nodes admitted and on target at each commit, for
//! the rollout pages' timelines and charts. Kept in memory by `serve`,
//! advanced after each pass by walking only the commits since the last
//! (git only: no store request).

use std::collections::{BTreeMap, VecDeque};

use chrono::{DateTime, Duration, Utc};
use gitfleet_schemas::notify::Notification;
use gitfleet_schemas::state::{Phase, RolloutState};

use crate::git::{GitError, Mirror};

/// How far back a first walk reads.
pub const LOOK_BACK: Duration = Duration::days(14);

/// The most commits one walk reads.
const WALK_LIMIT: usize = 5000;

/// The most events kept per rollout, and points per rollout and
/// environment; the oldest go first.
const MAX_EVENTS: usize = 200;
const MAX_POINTS: usize = 500;

/// A rollout in one environment as one state commit left it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Point {
    /// The commit's time.
    pub at: DateTime<Utc>,
    pub target: String,
    pub phase: Phase,
    pub step: u32,
    pub admitted: u64,
    pub on_target: Option<u64>,
}

#[derive(Clone, Debug, Default)]
pub struct Timeline {
    /// The state branch commit read up to.
    tip: Option<git2::Oid>,
    /// Rollout → its events, oldest first.
    pub events: BTreeMap<String, VecDeque<Notification>>,
    /// (rollout, environment) → points, oldest first.
    pub points: BTreeMap<(String, String), VecDeque<Point>>,
}

impl Timeline {
    /// Read the state commits made since the last call (the last
    /// [`LOOK_BACK`] on the first). Whether anything was added.
    pub fn advance(
        &mut self,
        mirror: &Mirror,
        fleet: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, GitError> {
        let since = now - LOOK_BACK;
        let last = self.tip;
        let history = mirror.state_history(WALK_LIMIT, |commit, _, time| {
            Some(commit) == last || time < since
        })?;
        let tip = history.tip.map(|(tip, _, _)| tip);
        if tip == last {
            return Ok(false);
        }
        let found_last = history.end == crate::git::WalkEnd::Stop && history.last == last;
        if last.is_some() && !found_last {
            // The branch was rewritten (compacted) under us: start over.
            self.events.clear();
            self.points.clear();
        }
        self.tip = tip;
        for change in history.changes.iter().rev() {
            let commit = change.commit.to_string();
            for (rollout, before, after) in &change.rollouts {
                let parse = |b: &Option<Vec<u8>>| -> Option<RolloutState> {
                    serde_json::from_slice(b.as_ref()?).ok()
                };
                let (before, after) = (parse(before), parse(after));
                let events = self.events.entry(rollout.clone()).or_default();
                events.extend(gitfleet_policy::notify::rollout_notifications(
                    fleet,
                    &commit,
                    rollout,
                    before.as_ref(),
                    after.as_ref(),
                ));
                while events.len() > MAX_EVENTS {
                    events.pop_front();
                }
                let Some(after) = after else { continue };
                for (env, s) in after.environments {
                    let point = Point {
                        at: change.time,
                        target: s.target.digest,
                        phase: s.phase,
                        step: s.step,
                        admitted: s.admitted,
                        on_target: s.on_target,
                    };
                    let points = self.points.entry((rollout.clone(), env)).or_default();
                    // Only changes of what is charted make a point.
                    let same = points.back().is_some_and(|p: &Point| {
                        (&p.target, p.phase, p.step, p.admitted, p.on_target)
                            == (
                                &point.target,
                                point.phase,
                                point.step,
                                point.admitted,
                                point.on_target,
                            )
                    });
                    if !same {
                        points.push_back(point);
                    }
                    while points.len() > MAX_POINTS {
                        points.pop_front();
                    }
                }
            }
        }
        Ok(true)
    }
}
