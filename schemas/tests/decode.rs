//! The KDL decoders: what they accept, what they reject, and where they say
//! the problem is.

use gitfleet_schemas::{
    Decoded, EnvironmentsFile, FleetFile, MeshFile, NodeFile, RolloutFile, RolloutTarget, StepSize,
};
use proptest::prelude::*;

fn codes<T>(d: &Decoded<T>) -> Vec<&'static str> {
    d.errors.iter().map(|e| e.code).collect()
}

/// The source text an error points at.
fn pointed<'a, T>(text: &'a str, d: &Decoded<T>, i: usize) -> &'a str {
    let s = d.errors[i].span;
    &text[s.start..s.end]
}

const NODE: &str = r#"version 1
id "edge-1"
environment "prod"
labels region="fra" role="edge"
node-key "IOs8C/nAD8rXYMOdNc/cYeTDnFMO2fE/SClf2Wxn0EU="
wireguard public-key="SNkgnF0XGvM7PGUHMPsVTCQozshsOwBbqBsjJYQ9Z04=" endpoint="198.51.100.31:51820"
"#;

#[test]
fn a_complete_node_file_decodes_cleanly() {
    let d = NodeFile::decode(NODE);
    assert!(d.is_clean(), "{:?}", d.errors);
    let node = d.value.unwrap();
    assert_eq!(node.id.value, "edge-1");
    assert_eq!(node.labels["role"].value, "edge");
    assert_eq!(
        node.wireguard.unwrap().endpoint.unwrap().value,
        "198.51.100.31:51820"
    );
}

#[test]
fn unknown_node_is_rejected_with_a_suggestion() {
    let text = NODE.replace("environment \"prod\"", "enviroment \"prod\"");
    let d = NodeFile::decode(&text);
    assert_eq!(codes(&d), ["unknown-node", "missing-node"]);
    assert_eq!(pointed(&text, &d, 0), "enviroment");
    assert_eq!(
        d.errors[0].help.as_deref(),
        Some("did you mean `environment`?")
    );
}

#[test]
fn unknown_property_is_rejected() {
    let text = NODE.replace("endpoint=", "endpiont=");
    let d = NodeFile::decode(&text);
    assert_eq!(codes(&d), ["unknown-property"]);
    assert!(pointed(&text, &d, 0).starts_with("endpiont="));
}

#[test]
fn wrong_value_type_names_both_types() {
    let text = NODE.replace("id \"edge-1\"", "id 17");
    let d = NodeFile::decode(&text);
    assert_eq!(codes(&d)[0], "wrong-type");
    assert_eq!(
        d.errors[0].message,
        "`id` expects a string, found an integer"
    );
    assert_eq!(pointed(&text, &d, 0), "17");
}

#[test]
fn repeated_singleton_is_rejected_at_the_repeat() {
    let text = format!("{NODE}environment \"dev\"\n");
    let d = NodeFile::decode(&text);
    assert_eq!(codes(&d), ["duplicate-node"]);
    assert_eq!(d.errors[0].span.start, text.rfind("environment").unwrap());
}

#[test]
fn missing_version_is_an_error_but_the_rest_is_read() {
    let text = NODE.replace("version 1\n", "");
    let d = NodeFile::decode(&text);
    assert_eq!(codes(&d), ["missing-version"]);
    assert!(d.value.is_some());
}

#[test]
fn future_version_is_rejected() {
    let d = NodeFile::decode(&NODE.replace("version 1", "version 2"));
    assert_eq!(codes(&d), ["unsupported-version"]);
}

#[test]
fn kdl_syntax_error_is_reported_not_panicked() {
    let d = NodeFile::decode("version 1\nid \"unterminated\n");
    assert!(d.value.is_none());
    assert!(
        codes(&d).iter().all(|c| *c == "kdl-syntax"),
        "{:?}",
        d.errors
    );
    assert!(!d.errors.is_empty());
}

#[test]
fn type_annotations_are_rejected() {
    let d = NodeFile::decode(&NODE.replace("id \"edge-1\"", "id (u8)\"edge-1\""));
    assert_eq!(codes(&d), ["type-annotation"]);
}

const ROLLOUT: &str = r#"version 1
config "edge"
selector role="edge"
step count=1
step percent=100
bake "10m"
gates {
    healthy
    max-error-rate 0.01
    max-p99-latency "250ms"
    http-check "http://127.0.0.1:9090/-/health"
}
window "weekdays" cron="0 9 * * Mon-Fri" duration="8h" time-zone="Europe/Berlin"
"#;

#[test]
fn a_rollout_decodes_steps_gates_and_windows() {
    let d = RolloutFile::decode(ROLLOUT);
    assert!(d.is_clean(), "{:?}", d.errors);
    let r = d.value.unwrap();
    assert_eq!(r.target.value, RolloutTarget::Config("edge".into()));
    let sizes: Vec<_> = r.steps.iter().map(|s| s.size.value.clone()).collect();
    assert_eq!(sizes, [StepSize::Count(1), StepSize::Percent(100)]);
    assert_eq!(r.bake_seconds.unwrap().value, 600);
    assert_eq!(r.gates.max_p99_latency_ms.unwrap().value, 250);
    assert!(r.gates.healthy);
    assert_eq!(r.gates.http_checks[0].expect_status.value, [200]);
    assert_eq!(r.windows[0].duration_seconds.value, 8 * 3600);
}

#[test]
fn a_step_needs_exactly_one_size() {
    let d = RolloutFile::decode(&ROLLOUT.replace("step count=1", "step count=1 percent=5"));
    assert_eq!(codes(&d), ["invalid-step"]);
}

#[test]
fn a_rollout_targets_one_thing() {
    let d = RolloutFile::decode(&ROLLOUT.replace("config \"edge\"", "config \"edge\"\nmesh \"m\""));
    assert_eq!(codes(&d), ["duplicate-node"]);
}

#[test]
fn a_bad_duration_says_how_to_write_one() {
    let text = ROLLOUT.replace("\"10m\"", "\"ten minutes\"");
    let d = RolloutFile::decode(&text);
    assert_eq!(codes(&d), ["invalid-duration"]);
    assert_eq!(pointed(&text, &d, 0), "\"ten minutes\"");
}

#[test]
fn a_window_needs_cron_duration_and_time_zone() {
    let d = RolloutFile::decode(&ROLLOUT.replace(" time-zone=\"Europe/Berlin\"", ""));
    assert_eq!(codes(&d), ["missing-property"]);
}

#[test]
fn environments_keep_their_order_and_approvals() {
    let d = EnvironmentsFile::decode(
        "version 1\nenvironment \"dev\"\nenvironment \"prod\" {\n  after \"dev\"\n  approvals 2 { users \"a\" \"b\"; teams \"org/sre\"; }\n}\n",
    );
    assert!(d.is_clean(), "{:?}", d.errors);
    let envs = d.value.unwrap().environments;
    let names: Vec<_> = envs.iter().map(|e| e.name.value.as_str()).collect();
    assert_eq!(names, ["dev", "prod"]);
    let a = envs[1].approvals.as_ref().unwrap();
    assert_eq!((a.required.value, a.users.len(), a.teams.len()), (2, 2, 1));
}

#[test]
fn fleet_file_reads_trust_defaults_and_lints() {
    let d = FleetFile::decode(
        "version 1\nname \"f\"\ntrust threshold=2 { root-key \"a\"; root-key \"b\"; }\ndefaults { drift \"repair\"; poll-interval \"30s\"; }\nlint \"route-timeout\" severity=\"warning\" { environments \"prod\"; }\n",
    );
    assert!(d.is_clean(), "{:?}", d.errors);
    let f = d.value.unwrap();
    assert_eq!(f.trust.unwrap().root_keys.len(), 2);
    assert_eq!(f.defaults.poll_interval_seconds.unwrap().value, 30);
    assert_eq!(f.lints[0].environments[0].value, "prod");
}

#[test]
fn fleet_file_rejects_an_unknown_drift_policy() {
    let d = FleetFile::decode("version 1\nname \"f\"\ndefaults { drift \"ignore\"; }\n");
    assert_eq!(codes(&d), ["invalid-value"]);
}

#[test]
fn mesh_requires_cidr_and_members() {
    let d = MeshFile::decode("version 1\nlisten-port 51820\n");
    assert_eq!(codes(&d), ["missing-node", "missing-node"]);
    assert!(d.value.is_none());
}

proptest! {
    /// Whatever the input, decoding returns (never panics) and every span it
    /// reports lies inside the text on character boundaries.
    #[test]
    fn decoding_never_panics_and_spans_are_in_bounds(text in "(version 1\n)?[a-z \"=0-9{};\n#()-]{0,120}") {
        let check = |errors: &[gitfleet_schemas::DecodeError]| {
            for e in errors {
                prop_assert!(e.span.start <= e.span.end && e.span.end <= text.len(), "{e:?}");
                prop_assert!(text.is_char_boundary(e.span.start) && text.is_char_boundary(e.span.end));
            }
            Ok(())
        };
        check(&NodeFile::decode(&text).errors)?;
        check(&RolloutFile::decode(&text).errors)?;
        check(&FleetFile::decode(&text).errors)?;
        check(&EnvironmentsFile::decode(&text).errors)?;
        check(&MeshFile::decode(&text).errors)?;
    }

    /// Mutating one byte of a valid file never makes the decoder panic.
    #[test]
    fn single_byte_mutations_are_handled(pos in 0usize..NODE.len(), byte in 0x20u8..0x7f) {
        let mut bytes = NODE.as_bytes().to_vec();
        bytes[pos] = byte;
        let text = String::from_utf8(bytes).unwrap();
        let _ = NodeFile::decode(&text);
    }
}

/// A template's parts go under a rollout's own: steps and windows as a
/// whole, each wait and each gate on its own, HTTP checks as a list.
#[test]
fn a_rollouts_own_parts_win_over_its_templates() {
    let fleet = FleetFile::decode(
        "version 1\nname \"f\"\ntemplate \"t\" {\n step count=1\n step percent=100\n bake \"30m\"\n max-unavailable 2\n deny-window \"night\" cron=\"0 22 * * *\" duration=\"8h\" time-zone=\"UTC\"\n gates {\n  healthy\n  max-error-rate 0.05\n  http-check \"http://127.0.0.1:1/a\"\n }\n}\n",
    );
    assert!(fleet.errors.is_empty(), "{:?}", fleet.errors);
    let template = &fleet.value.unwrap().templates[0];
    let rollout = RolloutFile::decode(
        "version 1\nconfig \"c\"\ntemplate \"t\"\nbake \"1m\"\ngates {\n max-error-rate 0.01\n http-check \"http://127.0.0.1:1/b\"\n}\n",
    );
    assert!(rollout.errors.is_empty(), "{:?}", rollout.errors);
    let r = rollout.value.unwrap().with_template(template);
    assert_eq!(r.steps.len(), 2);
    assert_eq!(r.bake_seconds.unwrap().value, 60);
    assert_eq!(r.max_unavailable.unwrap().value, 2);
    assert_eq!(r.windows.len(), 1);
    assert!(r.gates.healthy);
    assert_eq!(r.gates.max_error_rate.unwrap().value, 0.01);
    assert_eq!(r.gates.http_checks.len(), 1);
    assert_eq!(r.gates.http_checks[0].url.value, "http://127.0.0.1:1/b");
}

#[test]
fn a_rollout_with_a_template_needs_no_steps_of_its_own() {
    let with = RolloutFile::decode("version 1\nconfig \"c\"\ntemplate \"t\"\n");
    assert!(with.errors.is_empty(), "{:?}", with.errors);
    let without = RolloutFile::decode("version 1\nconfig \"c\"\n");
    assert_eq!(codes(&without), ["missing-node"]);
}

#[test]
fn an_http_check_takes_a_method_statuses_a_body_match_a_timeout_and_an_upstream() {
    let r = RolloutFile::decode(
        "version 1\nconfig \"c\"\nstep percent=100\ngates {\n http-check \"/healthz\" upstream=\"api\" method=\"POST\" expect-status=\"200,204\" body-contains=\"ok\" body-matches=\"^ok\" timeout=\"5s\"\n}\n",
    );
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    let c = &r.value.unwrap().gates.http_checks[0];
    assert_eq!(c.url.value, "/healthz");
    assert_eq!(c.expect_status.value, [200, 204]);
    assert_eq!(c.method.as_ref().unwrap().value, "POST");
    assert_eq!(c.body_contains.as_ref().unwrap().value, "ok");
    assert_eq!(c.body_matches.as_ref().unwrap().value, "^ok");
    assert_eq!(c.timeout_ms.as_ref().unwrap().value, 5000);
    assert_eq!(c.upstream.as_ref().unwrap().value, "api");
    let bad = RolloutFile::decode(
        "version 1\nconfig \"c\"\nstep percent=100\ngates {\n http-check \"http://127.0.0.1/\" expect-status=\"200,x\"\n}\n",
    );
    assert_eq!(bad.errors.len(), 1, "{:?}", bad.errors);
}
