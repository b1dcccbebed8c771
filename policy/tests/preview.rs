//! The plan preview of a pull request: annotations from the head's
//! diagnostics, what changes, and the risks a reviewer should see.

#![allow(clippy::unwrap_used)] // test helpers fail the test by panicking

mod common;

use common::example_repo;
use gitfleet_policy::plan::Targets;
use gitfleet_policy::preview::{preview, Preview, PullOwners, Side};
use gitfleet_policy::rules::Rules;

/// The preview of the example repo with `edit` applied to `path`.
fn preview_of(path: &str, edit: impl Fn(&str) -> String) -> Preview {
    let base_files = example_repo();
    let mut head_files = example_repo();
    head_files.insert(path, edit(base_files.text(path).unwrap()));
    let base = gitfleet_policy::check(&base_files);
    let head = gitfleet_policy::check(&head_files);
    let (bt, ht) = (
        Targets::from_model(&base.model),
        Targets::from_model(&head.model),
    );
    preview(
        Side {
            model: &base.model,
            diagnostics: &base.diagnostics,
            targets: &bt,
        },
        Side {
            model: &head.model,
            diagnostics: &head.diagnostics,
            targets: &ht,
        },
        &Rules::of_model(&base.model, "0123456789abcdef"),
        PullOwners::default(),
    )
}

#[test]
fn an_unchanged_repo_changes_nothing() {
    let p = preview_of("fleet.kdl", str::to_owned);
    assert_eq!(p.conclusion, "success");
    assert!(
        p.summary.contains("no bundle would change"),
        "{}",
        p.summary
    );
    assert!(p.annotations.is_empty());
}

#[test]
fn dropping_tls_is_named_as_a_risk_and_fails_the_lint() {
    let p = preview_of("configs/edge/sentinel.kdl", |t| {
        let start = t.find("        tls {").unwrap();
        let end = start + t[start..].find("        }\n").unwrap() + "        }\n".len();
        format!("{}{}", &t[..start], &t[end..]).replace("protocol \"https\"", "protocol \"http\"")
    });
    assert!(
        p.summary.contains("`edge`: listener `https` drops TLS"),
        "{}",
        p.summary
    );
    assert!(
        p.summary.contains("- `edge`"),
        "the rollout is listed: {}",
        p.summary
    );
    assert!(p.text.contains("-            cert-file"), "{}", p.text);
    // The fleet's own lint refuses a TLS-less listener in prod.
    assert_eq!(p.conclusion, "failure", "{:?}", p.annotations);
    assert!(p
        .annotations
        .iter()
        .any(|a| a.path == "configs/edge/sentinel.kdl" && a.level == "failure"));
}

#[test]
fn an_error_is_annotated_at_its_line() {
    let p = preview_of("nodes/edge-fra-1.kdl", |t| {
        t.replace("\"prod\"", "\"prdo\"")
    });
    assert_eq!(p.conclusion, "failure");
    assert!(p.title.starts_with("1 error(s)"), "{}", p.title);
    let a = &p.annotations[0];
    assert_eq!(
        (a.path.as_str(), a.start_line, a.level),
        ("nodes/edge-fra-1.kdl", 3, "failure")
    );
    assert!(a.message.contains("prdo"), "{}", a.message);
}

#[test]
fn lowering_prods_approvals_is_named_with_the_approvals_it_waits_for() {
    let p = preview_of("environments.kdl", |t| {
        let start = t.find("    approvals 2 {").unwrap();
        let end = start + t[start..].find("    }\n").unwrap() + "    }\n".len();
        format!("{}{}", &t[..start], &t[end..])
    });
    assert!(
        p.summary.contains("### Rules that change\n\n- **prod**: approvals: 2 of alice, bob or team acme/sre → none. The rules in force (from `0123456789ab`) ask for 2 approval(s) of the merge commit in prod (2 of alice, bob or team acme/sre): until then prod keeps its rules."),
        "{}",
        p.summary
    );
    // Other environments' rules are not touched.
    assert!(!p.summary.contains("**dev**"), "{}", p.summary);
}

/// The preview of a pull request that touches `paths`, in a fleet whose
/// fleet.kdl in force has `owners`, and whose head rewrites them to
/// `head_owners`.
fn preview_with_owners(
    owners: &str,
    head_owners: &str,
    paths: &[&str],
    approved: &[(&str, &str)],
) -> Preview {
    let mut base_files = example_repo();
    let fleet = base_files.text("fleet.kdl").unwrap().to_owned();
    base_files.insert("fleet.kdl", format!("{fleet}{owners}"));
    let mut head_files = base_files.clone();
    head_files.insert("fleet.kdl", format!("{fleet}{head_owners}"));
    let base = gitfleet_policy::check(&base_files);
    let head = gitfleet_policy::check(&head_files);
    assert!(base.diagnostics.iter().all(|d| d.code != "owners-pattern"));
    let (bt, ht) = (
        Targets::from_model(&base.model),
        Targets::from_model(&head.model),
    );
    let paths: Vec<String> = paths.iter().map(|p| (*p).to_owned()).collect();
    let approved: Vec<(String, String)> = approved
        .iter()
        .map(|(p, w)| ((*p).to_owned(), (*w).to_owned()))
        .collect();
    preview(
        Side {
            model: &base.model,
            diagnostics: &base.diagnostics,
            targets: &bt,
        },
        Side {
            model: &head.model,
            diagnostics: &head.diagnostics,
            targets: &ht,
        },
        &Rules::of_model(&base.model, "0123456789abcdef"),
        PullOwners {
            paths: &paths,
            approved: &approved,
        },
    )
}

#[test]
fn the_preview_lists_the_owners_in_force_and_who_approved() {
    let owners =
        "owners \"configs/edge/**\" teams=\"acme/edge\"\nowners \"fleet.kdl\" users=\"alice\"\n";
    let p = preview_with_owners(
        owners,
        "owners \"configs/edge/**\" users=\"mallory\"\n",
        &[
            "configs/edge/sentinel.kdl",
            "fleet.kdl",
            "nodes/edge-fra-1.kdl",
        ],
        &[("fleet.kdl", "alice")],
    );
    assert!(
        p.summary.contains(
            "- `configs/edge/**` (team acme/edge): **waiting**; touches `configs/edge/sentinel.kdl`"
        ),
        "{}",
        p.summary
    );
    assert!(
        p.summary
            .contains("- `fleet.kdl` (alice): approved by alice; touches `fleet.kdl`"),
        "{}",
        p.summary
    );
    assert!(
        !p.summary.contains("mallory ("),
        "the head's owners judge nothing: {}",
        p.summary
    );
    // The change to owners is a change to the rules, named as such.
    assert!(
        p.summary.contains("owners `configs/edge/**`"),
        "{}",
        p.summary
    );
}

#[test]
fn a_pull_request_touching_no_owned_path_lists_no_owners() {
    let p = preview_with_owners(
        "owners \"configs/edge/**\" users=\"alice\"\n",
        "owners \"configs/edge/**\" users=\"alice\"\n",
        &["configs/api-gateway/sentinel.kdl"],
        &[],
    );
    assert!(
        !p.summary.contains("Owners who must approve"),
        "{}",
        p.summary
    );
}
