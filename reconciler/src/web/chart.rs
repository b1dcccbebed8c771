//! Server-rendered SVG: a rollout's nodes admitted and on target over time
//! in one environment, from the state branch's points, with the moments it
//! completed, failed or rolled back marked. No script; pure.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use gitfleet_schemas::state::Phase;

use super::html::esc;
use crate::pass::timeline::Point;

const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 150.0;
const LEFT: f64 = 40.0;
const RIGHT: f64 = 10.0;
const TOP: f64 = 10.0;
const BOTTOM: f64 = 24.0;

/// The chart of `points` (oldest first) up to `now`, on a scale of `nodes`
/// (the rollout's nodes in the environment now).
pub fn rollout_chart(env: &str, points: &[Point], nodes: u64, now: DateTime<Utc>) -> String {
    let Some(first) = points.first() else {
        return String::new();
    };
    let start = first.at;
    let end = now.max(points.last().map_or(start, |p| p.at));
    let span = (end - start).num_milliseconds().max(1) as f64;
    let top = points
        .iter()
        .map(|p| p.admitted.max(p.on_target.unwrap_or(0)))
        .chain([nodes, 1])
        .max()
        .unwrap_or(1) as f64;
    let x = |at: DateTime<Utc>| {
        LEFT + (at - start).num_milliseconds() as f64 / span * (WIDTH - LEFT - RIGHT)
    };
    let y = |n: u64| TOP + (1.0 - n as f64 / top) * (HEIGHT - TOP - BOTTOM);
    // A step line: each value holds until the next point, the last until now.
    // A rollout that failed or rolled back stops counting where it ended:
    // the nodes went back, the line does not go on.
    let ended = points
        .last()
        .is_some_and(|p| matches!(p.phase, Phase::Failed | Phase::RolledBack));
    let steps = |value: &dyn Fn(&Point) -> Option<u64>, hold: bool| {
        let mut d = String::new();
        let mut last: Option<f64> = None;
        for (i, p) in points.iter().enumerate() {
            let Some(v) = value(p) else { continue };
            let (px, py) = (x(p.at), y(v));
            match last {
                None => {
                    let _ = write!(d, "M{px:.1},{py:.1}");
                }
                Some(ly) => {
                    let _ = write!(d, " L{px:.1},{ly:.1} L{px:.1},{py:.1}");
                }
            }
            last = Some(py);
            if i + 1 == points.len() && hold {
                let _ = write!(d, " L{:.1},{py:.1}", x(end));
            }
        }
        d
    };
    let admitted = steps(&|p| Some(p.admitted), true);
    let on_target = steps(&|p| p.on_target, !ended);
    let mut out = format!(
        "<svg class=chart width=\"{WIDTH}\" height=\"{HEIGHT}\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" role=\"img\" \
aria-label=\"nodes admitted and on target in {env} over time\" data-env=\"{env}\" data-points=\"{n}\">",
        env = esc(env),
        n = points.len(),
    );
    let _ = write!(
        out,
        "<line x1=\"{LEFT}\" y1=\"{b:.1}\" x2=\"{r:.1}\" y2=\"{b:.1}\" stroke=\"#adb5bd\"/>\
<line x1=\"{LEFT}\" y1=\"{TOP}\" x2=\"{LEFT}\" y2=\"{b:.1}\" stroke=\"#adb5bd\"/>\
<text x=\"{tx:.1}\" y=\"{ty:.1}\" font-size=\"10\" text-anchor=\"end\">{top}</text>\
<text x=\"{tx:.1}\" y=\"{b:.1}\" font-size=\"10\" text-anchor=\"end\">0</text>\
<text x=\"{LEFT}\" y=\"{lb:.1}\" font-size=\"10\">{from}</text>\
<text x=\"{r:.1}\" y=\"{lb:.1}\" font-size=\"10\" text-anchor=\"end\">{to}</text>",
        b = HEIGHT - BOTTOM,
        r = WIDTH - RIGHT,
        tx = LEFT - 4.0,
        ty = TOP + 8.0,
        top = top as u64,
        lb = HEIGHT - 8.0,
        from = start.format("%Y-%m-%d %H:%M"),
        to = end.format("%Y-%m-%d %H:%M"),
    );
    // The moments a rollout of a bundle ended, and how.
    let mut before: Option<&Point> = None;
    for p in points {
        let ended = before.is_none_or(|b| b.phase != p.phase || b.target != p.target);
        let colour = match p.phase {
            Phase::Complete => Some("#2f9e44"),
            Phase::Failed | Phase::RolledBack => Some("#c92a2a"),
            _ => None,
        };
        if let (true, Some(colour)) = (ended, colour) {
            let px = x(p.at);
            let _ = write!(
                out,
                "<line class=\"{phase}\" x1=\"{px:.1}\" y1=\"{TOP}\" x2=\"{px:.1}\" y2=\"{b:.1}\" stroke=\"{colour}\" stroke-dasharray=\"3,3\"><title>{phase} at {at}</title></line>",
                phase = p.phase,
                b = HEIGHT - BOTTOM,
                at = p.at.format("%Y-%m-%d %H:%M:%S UTC"),
            );
        }
        before = Some(p);
    }
    let _ = write!(
        out,
        "<path class=admitted d=\"{admitted}\" fill=\"none\" stroke=\"#1971c2\" stroke-width=\"2\"><title>admitted</title></path>"
    );
    if !on_target.is_empty() {
        let _ = write!(
            out,
            "<path class=on-target d=\"{on_target}\" fill=\"none\" stroke=\"#2f9e44\" stroke-width=\"2\" stroke-dasharray=\"5,2\"><title>on target</title></path>"
        );
    }
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(secs: i64, phase: Phase, admitted: u64, on_target: Option<u64>) -> Point {
        Point {
            at: DateTime::<Utc>::UNIX_EPOCH + chrono::Duration::seconds(secs),
            target: "sha256:a".into(),
            phase,
            step: 1,
            admitted,
            on_target,
        }
    }

    #[test]
    fn the_lines_step_from_point_to_point_and_hold_until_now() {
        let points = [
            point(0, Phase::Progressing, 1, Some(0)),
            point(50, Phase::Verifying, 1, Some(1)),
            point(100, Phase::Complete, 4, Some(4)),
        ];
        let now = DateTime::<Utc>::UNIX_EPOCH + chrono::Duration::seconds(200);
        let svg = rollout_chart("dev", &points, 4, now);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"), "{svg}");
        // Admitted: 1 of 4 (y = 10 + 116 * 3/4) from x=40 until the third
        // point, then 4 (y = 10) until now.
        let admitted = svg.split("class=admitted d=\"").nth(1).unwrap();
        let admitted = &admitted[..admitted.find('"').unwrap()];
        assert_eq!(
            admitted,
            "M40.0,97.0 L187.5,97.0 L187.5,97.0 L335.0,97.0 L335.0,10.0 L630.0,10.0"
        );
        assert!(svg.contains("class=on-target"));
        // The completion is marked, once.
        assert_eq!(svg.matches("<line class=\"complete\"").count(), 1);
        assert!(svg.contains("data-points=\"3\""));
    }

    #[test]
    fn a_rollback_is_marked_in_red_and_names_are_escaped() {
        let points = [
            point(0, Phase::Progressing, 1, Some(1)),
            point(10, Phase::RolledBack, 1, Some(0)),
        ];
        let now = DateTime::<Utc>::UNIX_EPOCH + chrono::Duration::seconds(100);
        let svg = rollout_chart("<dev>", &points, 3, now);
        assert!(svg.contains("<line class=\"rolled-back\""), "{svg}");
        assert!(svg.contains("#c92a2a"));
        assert!(svg.contains("&lt;dev&gt;") && !svg.contains("<dev>"));
        // Its on-target line ends where it rolled back (x = 99 of 630);
        // the admitted line holds until now.
        let line = |class: &str| {
            let d = svg.split(&format!("class={class} d=\"")).nth(1).unwrap();
            d[..d.find('"').unwrap()].to_owned()
        };
        assert_eq!(line("on-target"), "M40.0,87.3 L99.0,87.3 L99.0,126.0");
        assert!(
            line("admitted").ends_with("L630.0,87.3"),
            "{}",
            line("admitted")
        );
    }

    #[test]
    fn no_points_no_chart() {
        assert_eq!(
            rollout_chart("dev", &[], 3, DateTime::<Utc>::UNIX_EPOCH),
            ""
        );
    }
}
