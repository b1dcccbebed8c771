//! When to publish a channel manifest, and what it says.

use chrono::{DateTime, Duration, Utc};
use gitfleet_schemas::trust::{ChannelManifest, ChannelRollout};

/// The manifest to publish for `environment`, or `None` when the current one
/// says the same and has more than half its freshness left. A changed or
/// nearly expired manifest gets the next serial, so serials only grow.
pub fn next_manifest(
    current: Option<&ChannelManifest>,
    fleet: &str,
    environment: &str,
    rollouts: Vec<ChannelRollout>,
    now: DateTime<Utc>,
    freshness: Duration,
) -> Option<ChannelManifest> {
    if let Some(c) = current {
        let same = c.fleet == fleet && c.environment == environment && c.rollouts == rollouts;
        if same && c.expires - now > freshness / 2 {
            return None;
        }
    }
    Some(ChannelManifest {
        fleet: fleet.to_owned(),
        environment: environment.to_owned(),
        serial: current.map_or(1, |c| c.serial.saturating_add(1)),
        expires: now + freshness,
        rollouts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0).unwrap()
    }

    #[test]
    fn the_first_manifest_has_serial_one() {
        let m = next_manifest(None, "f", "prod", vec![], now(), Duration::hours(1)).unwrap();
        assert_eq!((m.serial, m.expires), (1, now() + Duration::hours(1)));
    }

    #[test]
    fn an_unchanged_fresh_manifest_is_not_rewritten() {
        let m = next_manifest(None, "f", "prod", vec![], now(), Duration::hours(1)).unwrap();
        let later = now() + Duration::minutes(20);
        assert_eq!(
            next_manifest(Some(&m), "f", "prod", vec![], later, Duration::hours(1)),
            None
        );
    }

    #[test]
    fn a_manifest_is_resigned_before_it_expires() {
        let m = next_manifest(None, "f", "prod", vec![], now(), Duration::hours(1)).unwrap();
        let later = now() + Duration::minutes(31);
        let n = next_manifest(Some(&m), "f", "prod", vec![], later, Duration::hours(1)).unwrap();
        assert_eq!(n.serial, 2);
        assert_eq!(n.expires, later + Duration::hours(1));
    }
}
