//! Steering a rollout by editing its file: `paused #true`, its removal,
//! `rollback #true`. One edit, made by `gitfleet rollout` in a working
//! tree and by `gitfleet serve`'s buttons on the spec branch, so both
//! leave the same commit.

/// What a person asks of a rollout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Steer {
    Pause,
    Resume,
    Rollback,
}

impl Steer {
    /// `pause`, `resume` or `rollback`: the CLI's verb, and the button's.
    pub fn verb(self) -> &'static str {
        match self {
            Steer::Pause => "pause",
            Steer::Resume => "resume",
            Steer::Rollback => "rollback",
        }
    }

    pub fn parse(verb: &str) -> Option<Steer> {
        Some(match verb {
            "pause" => Steer::Pause,
            "resume" => Steer::Resume,
            "rollback" => Steer::Rollback,
            _ => return None,
        })
    }

    /// The rollout file `text` with this edit made (the same text when it
    /// already says so).
    pub fn edit(self, text: &str) -> String {
        match self {
            Steer::Pause => set_flag(text, "paused", true),
            Steer::Resume => set_flag(text, "paused", false),
            Steer::Rollback => set_flag(text, "rollback", true),
        }
    }

    /// The commit message: what, why when given, and how it was asked.
    pub fn message(self, rollout: &str, why: Option<&str>, requested: &str) -> String {
        let mut message = format!("rollout {rollout}: {}\n\n", self.verb());
        if let Some(why) = why.filter(|w| !w.trim().is_empty()) {
            message.push_str(why.trim());
            message.push_str("\n\n");
        }
        message.push_str(requested);
        message.push('\n');
        message
    }
}

/// Set a top-level boolean node: replace its line, or append one. `false`
/// removes the line (the default), so `resume` leaves no trace but history.
fn set_flag(text: &str, name: &str, on: bool) -> String {
    let is_flag = |line: &str| {
        line.strip_prefix(name)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', ';']))
    };
    let mut out: Vec<String> = Vec::new();
    let mut found = false;
    for line in text.lines() {
        if is_flag(line) {
            found = true;
            if on {
                out.push(format!("{name} #true"));
            }
        } else {
            out.push(line.to_owned());
        }
    }
    if on && !found {
        out.push(format!("{name} #true"));
    }
    let mut s = out.join("\n");
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pausing_appends_or_replaces_the_flag() {
        assert_eq!(
            set_flag("version 1\nconfig \"e\"\n", "paused", true),
            "version 1\nconfig \"e\"\npaused #true\n"
        );
        assert_eq!(
            set_flag("version 1\npaused #false\n", "paused", true),
            "version 1\npaused #true\n"
        );
    }

    #[test]
    fn resuming_removes_the_flag_and_keeps_everything_else() {
        let text = "version 1\n// paused because of INC-1\npaused #true\nstep percent=100\n";
        assert_eq!(
            set_flag(text, "paused", false),
            "version 1\n// paused because of INC-1\nstep percent=100\n"
        );
    }

    #[test]
    fn only_top_level_flag_lines_are_touched() {
        let text = "version 1\ngates {\n    paused_note\n}\npaused_until \"x\"\n";
        assert_eq!(set_flag(text, "paused", false), text);
    }
}
