//! Change windows: is a change allowed at `now`? Deny wins over allow; with
//! no allow window, changes are allowed whenever no deny window is open.

use std::str::FromStr;

use chrono::{DateTime, Duration, Utc};
use gitfleet_schemas::{Window, WindowKind};

use crate::checks::parse_cron;

/// The verdict, with the window that decided it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Open { by: Option<String> },
    Closed { reason: String },
}

impl Verdict {
    pub fn is_open(&self) -> bool {
        matches!(self, Verdict::Open { .. })
    }
}

/// Whether `w` is open at `now`: it fired at some time in
/// `(now - duration, now]`. An invalid window (reported by `check`) is never
/// open.
pub fn window_open(w: &Window, now: DateTime<Utc>) -> bool {
    let (Ok(schedule), Ok(tz)) = (
        parse_cron(&w.cron.value),
        chrono_tz::Tz::from_str(&w.time_zone.value),
    ) else {
        return false;
    };
    let duration =
        Duration::seconds(i64::try_from(w.duration_seconds.value).unwrap_or(i64::MAX / 2));
    let Some(start) = now.checked_sub_signed(duration) else {
        return false;
    };
    schedule
        .after(&start.with_timezone(&tz))
        .next()
        .is_some_and(|fire| fire.with_timezone(&Utc) <= now)
}

/// Deny wins: any open deny window closes; otherwise any open allow window
/// opens, and no allow windows at all means open.
pub fn verdict<'a>(windows: impl IntoIterator<Item = &'a Window>, now: DateTime<Utc>) -> Verdict {
    let mut allows = 0;
    let mut open_allow = None;
    for w in windows {
        match w.kind {
            WindowKind::Deny if window_open(w, now) => {
                return Verdict::Closed {
                    reason: format!("deny window `{}` is open", w.name.value),
                };
            }
            WindowKind::Deny => {}
            WindowKind::Allow => {
                allows += 1;
                if open_allow.is_none() && window_open(w, now) {
                    open_allow = Some(w.name.value.clone());
                }
            }
        }
    }
    match (allows, open_allow) {
        (0, _) => Verdict::Open { by: None },
        (_, Some(name)) => Verdict::Open { by: Some(name) },
        (_, None) => Verdict::Closed {
            reason: "no change window is open".to_owned(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use gitfleet_schemas::Spanned;

    fn w(kind: WindowKind, cron: &str, hours: u64, tz: &str) -> Window {
        Window {
            name: Spanned::new(format!("{kind:?}-{cron}"), Default::default()),
            kind,
            cron: Spanned::new(cron.to_owned(), Default::default()),
            duration_seconds: Spanned::new(hours * 3600, Default::default()),
            time_zone: Spanned::new(tz.to_owned(), Default::default()),
        }
    }

    fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
    }

    #[test]
    fn a_window_is_open_for_its_duration_after_each_firing() {
        // 09:00 Berlin on weekdays for 8 hours; Berlin is UTC+1 in November.
        let win = w(WindowKind::Allow, "0 9 * * 1-5", 8, "Europe/Berlin");
        // Monday 2026-11-23.
        assert!(!window_open(&win, at(2026, 11, 23, 7, 59)));
        assert!(window_open(&win, at(2026, 11, 23, 8, 0)));
        assert!(window_open(&win, at(2026, 11, 23, 15, 59)));
        assert!(!window_open(&win, at(2026, 11, 23, 16, 0)));
        // Saturday.
        assert!(!window_open(&win, at(2026, 11, 28, 10, 0)));
    }

    #[test]
    fn deny_wins_over_allow() {
        let allow = w(WindowKind::Allow, "0 0 * * *", 24, "UTC");
        let deny = w(WindowKind::Deny, "0 12 * * *", 1, "UTC");
        assert!(verdict([&allow, &deny], at(2026, 11, 23, 11, 0)).is_open());
        assert_eq!(
            verdict([&allow, &deny], at(2026, 11, 23, 12, 30)),
            Verdict::Closed {
                reason: format!("deny window `{}` is open", deny.name.value)
            }
        );
    }

    #[test]
    fn no_allow_windows_means_open_unless_denied() {
        assert!(verdict([], at(2026, 11, 23, 3, 0)).is_open());
        let deny = w(WindowKind::Deny, "0 3 * * *", 1, "UTC");
        assert!(!verdict([&deny], at(2026, 11, 23, 3, 30)).is_open());
    }

    #[test]
    fn time_zones_and_dst_are_respected() {
        // 09:00 New York: 14:00 UTC in winter (EST), 13:00 UTC in summer (EDT).
        let win = w(WindowKind::Allow, "0 9 * * *", 1, "America/New_York");
        assert!(window_open(&win, at(2026, 1, 15, 14, 30)));
        assert!(!window_open(&win, at(2026, 1, 15, 13, 30)));
        assert!(window_open(&win, at(2026, 7, 15, 13, 30)));
    }
}
