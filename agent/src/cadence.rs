//! How often an agent polls and reports: its own settings (agent.kdl),
//! overridden by the fleet's (the signed channel manifest), fast while a
//! rollout moves in its environment and slow while it is idle. The real
//! agent and the simulator keep time by the same rule.

use gitfleet_schemas::agent::AgentConfig;
use gitfleet_schemas::fleet::DriftPolicy;
use gitfleet_schemas::trust::AgentSettings;

/// An agent's own cadence, as agent.kdl (or `gitfleet simulate`'s flags)
/// sets it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Local {
    pub poll_ms: u64,
    /// Up to this much is added to a `poll_ms` wait; in proportion to the
    /// interval in force otherwise.
    pub jitter_ms: u64,
    /// The interval while the manifest says the environment is idle.
    pub idle_poll_ms: u64,
    pub heartbeat_ms: u64,
    pub drift: DriftPolicy,
}

impl Local {
    pub fn of(config: &AgentConfig) -> Local {
        Local {
            poll_ms: config.poll_ms,
            jitter_ms: config.jitter_ms,
            idle_poll_ms: config.idle_poll_ms,
            heartbeat_ms: config.heartbeat_ms,
            drift: config.drift,
        }
    }
}

/// The cadence in force.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cadence {
    pub poll_ms: u64,
    /// Up to this much is added to each wait.
    pub jitter_ms: u64,
    pub heartbeat_ms: u64,
    pub drift: DriftPolicy,
}

impl Cadence {
    /// `local`'s cadence under the fleet's settings: the fleet's values win;
    /// an idle environment polls at `local`'s idle interval.
    pub fn of(local: &Local, fleet: Option<&AgentSettings>) -> Cadence {
        let ms = |s: Option<u64>| s.map(|s| s.saturating_mul(1000));
        let idle = fleet.is_some_and(|f| f.idle);
        let own_poll = if idle {
            local.idle_poll_ms
        } else {
            local.poll_ms
        };
        let poll_ms = ms(fleet.and_then(|f| f.poll_seconds)).unwrap_or(own_poll);
        // Without a fleet jitter, the local one, in proportion to the
        // interval in force (3 s of 30 s is 30 s of 5 minutes).
        let scaled = local
            .jitter_ms
            .saturating_mul(poll_ms)
            .checked_div(local.poll_ms)
            .unwrap_or(local.jitter_ms);
        Cadence {
            poll_ms,
            jitter_ms: ms(fleet.and_then(|f| f.poll_jitter_seconds)).unwrap_or(scaled),
            heartbeat_ms: ms(fleet.and_then(|f| f.heartbeat_seconds)).unwrap_or(local.heartbeat_ms),
            drift: fleet.and_then(|f| f.drift).unwrap_or(local.drift),
        }
    }

    /// How long to wait for the next poll, coming from `before`:
    /// the interval plus up to the jitter; but after a slow-down (a rollout
    /// ended, or the first manifest said idle) anywhere within one slow
    /// interval, so that nodes which polled together a moment ago do not
    /// keep polling together. `below(n)` is a random number in `0..=n`.
    pub fn wait_ms(&self, before: &Cadence, below: impl FnOnce(u64) -> u64) -> u64 {
        if self.poll_ms > before.poll_ms {
            below(self.poll_ms.saturating_add(self.jitter_ms))
        } else {
            self.poll_ms.saturating_add(below(self.jitter_ms))
        }
    }

    /// The heartbeat as a chrono duration.
    pub fn heartbeat(&self) -> chrono::Duration {
        chrono::Duration::milliseconds(i64::try_from(self.heartbeat_ms).unwrap_or(i64::MAX / 2))
    }

    /// Say once, when the fleet's settings change, where they differ from
    /// the local ones.
    pub fn log_overrides(&self, local: &Local, fleet: Option<&AgentSettings>) {
        // The local values, idle or not as the manifest says.
        let idle = fleet.is_some_and(|f| f.idle);
        let mode = AgentSettings {
            idle,
            ..AgentSettings::default()
        };
        let own = Cadence::of(local, Some(&mode));
        tracing::info!(idle, poll_ms = self.poll_ms, "poll cadence");
        if self.poll_ms != own.poll_ms {
            tracing::info!(
                agent_kdl_ms = own.poll_ms,
                fleet_ms = self.poll_ms,
                "poll interval set by the fleet overrides agent.kdl"
            );
        }
        if self.jitter_ms != own.jitter_ms {
            tracing::info!(
                agent_kdl_ms = own.jitter_ms,
                fleet_ms = self.jitter_ms,
                "poll jitter set by the fleet overrides agent.kdl"
            );
        }
        if self.heartbeat_ms != own.heartbeat_ms {
            tracing::info!(
                agent_kdl_ms = own.heartbeat_ms,
                fleet_ms = self.heartbeat_ms,
                "heartbeat set by the fleet overrides agent.kdl"
            );
        }
        if self.drift != own.drift {
            tracing::info!(agent_kdl = ?own.drift, fleet = ?self.drift, "drift policy set by the fleet overrides agent.kdl");
        }
        if let Some(f) = fleet.filter(|f| !f.health_checks.is_empty()) {
            tracing::info!(
                checks = f.health_checks.len(),
                "health checks set by the fleet"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCAL: Local = Local {
        poll_ms: 30_000,
        jitter_ms: 3_000,
        idle_poll_ms: 300_000,
        heartbeat_ms: 60_000,
        drift: DriftPolicy::Report,
    };

    #[test]
    fn without_a_manifest_the_agent_polls_at_its_fast_interval() {
        let c = Cadence::of(&LOCAL, None);
        assert_eq!(
            (c.poll_ms, c.jitter_ms, c.heartbeat_ms),
            (30_000, 3_000, 60_000)
        );
    }

    #[test]
    fn a_slow_down_spreads_the_next_poll_over_one_slow_interval() {
        let fast = Cadence::of(&LOCAL, None);
        let idle = Cadence::of(
            &LOCAL,
            Some(&AgentSettings {
                idle: true,
                ..AgentSettings::default()
            }),
        );
        // Same pace: the interval plus jitter, never sooner.
        assert_eq!(fast.wait_ms(&fast, |_| 0), 30_000);
        assert_eq!(fast.wait_ms(&fast, |n| n), 33_000);
        assert_eq!(idle.wait_ms(&idle, |_| 0), 300_000);
        // Slowing down: anywhere from now to one slow interval and its
        // jitter.
        assert_eq!(idle.wait_ms(&fast, |_| 0), 0);
        assert_eq!(idle.wait_ms(&fast, |n| n), 330_000);
        // Speeding up (a rollout started): the fast interval at once.
        assert_eq!(fast.wait_ms(&idle, |_| 0), 30_000);
    }

    #[test]
    fn an_idle_environment_polls_at_the_idle_interval_with_jitter_in_proportion() {
        let idle = AgentSettings {
            idle: true,
            ..AgentSettings::default()
        };
        let c = Cadence::of(&LOCAL, Some(&idle));
        assert_eq!((c.poll_ms, c.jitter_ms), (300_000, 30_000));
        let moving = AgentSettings::default();
        assert_eq!(Cadence::of(&LOCAL, Some(&moving)).poll_ms, 30_000);
    }

    #[test]
    fn the_fleets_values_win_over_the_local_ones() {
        let fleet = AgentSettings {
            idle: true,
            poll_seconds: Some(10),
            poll_jitter_seconds: Some(2),
            heartbeat_seconds: Some(20),
            drift: Some(DriftPolicy::Repair),
            ..AgentSettings::default()
        };
        let c = Cadence::of(&LOCAL, Some(&fleet));
        assert_eq!(
            c,
            Cadence {
                poll_ms: 10_000,
                jitter_ms: 2_000,
                heartbeat_ms: 20_000,
                drift: DriftPolicy::Repair,
            }
        );
    }

    #[test]
    fn a_zero_poll_interval_does_not_divide_by_zero() {
        let local = Local {
            poll_ms: 0,
            ..LOCAL
        };
        assert_eq!(Cadence::of(&local, None).jitter_ms, 3_000);
    }
}
