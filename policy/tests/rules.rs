//! Rules that judge a change come from before the change: for any sequence
//! of commits (rule edits that loosen, tighten or add an approver, config
//! changes) and approvals given in between, a pass built from the real
//! pieces (`rules::decide`, `approvals::count`, `approvals::under`,
//! `plan::plan`) never admits a change into prod with fewer approvals than
//! an obviously correct model of "the rules of the last deployed commit"
//! requires, and holds exactly the rules that model holds.

#![allow(clippy::unwrap_used)] // test helpers fail the test by panicking

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::rc::Rc;

use chrono::{DateTime, Duration, TimeZone, Utc};
use ed25519_dalek::SigningKey;
use gitfleet_policy::plan::{plan, Desired, Inputs, Observation, Targets};
use gitfleet_policy::rules::{self, Rules};
use gitfleet_policy::{FleetModel, RepoFiles};
use gitfleet_schemas::approval::{approval_path, Approval};
use gitfleet_schemas::state::{RolloutState, RulesState};
use gitfleet_schemas::trust::{BundleRef, Document as _, PublicKey};
use proptest::prelude::*;

const PEOPLE: [&str; 4] = ["alice", "bob", "carol", "mallory"];

fn key(who: usize) -> SigningKey {
    SigningKey::from_bytes(&[u8::try_from(who).unwrap() + 1; 32])
}

fn public(who: usize) -> String {
    PublicKey(key(who).verifying_key().to_bytes()).to_string()
}

fn node_key(i: usize) -> String {
    PublicKey(
        SigningKey::from_bytes(&[40 + i as u8; 32])
            .verifying_key()
            .to_bytes(),
    )
    .to_string()
}

/// Prod's rules as the model knows them: approvals required, and whether
/// mallory (whose key the commit adds) is one of the approvers. With no
/// approvals required, who may approve does not matter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ProdRules {
    required: u64,
    mallory: bool,
}

impl ProdRules {
    fn normal(self) -> Self {
        if self.required == 0 {
            ProdRules {
                required: 0,
                mallory: false,
            }
        } else {
            self
        }
    }

    fn users(self) -> BTreeSet<&'static str> {
        let mut u = BTreeSet::from(["alice", "bob", "carol"]);
        if self.mallory {
            u.insert("mallory");
        }
        u
    }
}

/// The fleet repo at one commit: dev → prod, one node in dev, two in prod,
/// rollout `web` of config `web`.
fn repo(rules: ProdRules, config_version: u32) -> FleetModel {
    let mut f = RepoFiles::new();
    let mut fleet = "version 1\nname \"t\"\n".to_owned();
    for (i, who) in PEOPLE.iter().enumerate() {
        if i < 3 || rules.mallory {
            fleet.push_str(&format!("approver \"{who}\" key=\"{}\"\n", public(i)));
        }
    }
    f.insert("fleet.kdl", fleet);
    let users: Vec<String> = rules.users().iter().map(|u| format!("\"{u}\"")).collect();
    f.insert(
        "environments.kdl",
        format!(
            "version 1\nenvironment \"dev\"\nenvironment \"prod\" {{ after \"dev\"; approvals {} {{ users {}; }}; }}\n",
            rules.required,
            users.join(" ")
        ),
    );
    for (i, env) in ["dev", "prod", "prod"].iter().enumerate() {
        f.insert(
            format!("nodes/n{i}.kdl"),
            format!(
                "version 1\nid \"n{i}\"\nenvironment \"{env}\"\nlabels role=\"web\"\nnode-key \"{}\"\n",
                node_key(i)
            ),
        );
    }
    f.insert(
        "configs/web/sentinel.kdl",
        format!("// v{config_version}\nsystem {{ worker-threads 1; }}\nlisteners {{ listener \"h\" {{ address \"127.0.0.1:8080\"; protocol \"http\"; }}; }}\n"),
    );
    f.insert(
        "rollouts/web.kdl",
        "version 1\nconfig \"web\"\nselector role=\"web\"\nstep percent=100\nmax-unavailable 2\n",
    );
    let checked = gitfleet_policy::check(&f);
    assert!(!checked.has_errors(), "{:#?}", checked.diagnostics);
    checked.model
}

#[derive(Clone, Debug)]
enum Op {
    /// A commit that sets prod's approvals (and maybe adds mallory).
    Rules(ProdRules),
    /// A commit that changes the config: a new bundle.
    Config,
    /// `who` approves, for prod, the commit that last changed the rules
    /// (or the config).
    Approve { who: usize, rules: bool },
    /// A reconcile pass (agents follow at once).
    Pass,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => (0u64..4, any::<bool>()).prop_map(|(required, mallory)| Op::Rules(ProdRules {
            required,
            mallory
        })),
        1 => Just(Op::Config),
        2 => (0usize..4, any::<bool>()).prop_map(|(who, rules)| Op::Approve { who, rules }),
        3 => Just(Op::Pass),
    ]
}

struct Commit {
    id: String,
    model: FleetModel,
    rules: ProdRules,
    /// The last commit that changed a rule file, and the config.
    rules_change: String,
    config_change: String,
    bundle: u32,
}

struct World {
    commits: Vec<Rc<Commit>>,
    approval_files: BTreeMap<String, Vec<u8>>,
    record: Option<RulesState>,
    state: BTreeMap<String, RolloutState>,
    reports: HashMap<String, Observation>,
    now: DateTime<Utc>,
    /// The model: prod's rules in force.
    trusted: ProdRules,
}

fn digest(n: u32) -> BundleRef {
    BundleRef {
        digest: format!("sha256:{:064x}", n),
        length: 100,
    }
}

impl World {
    fn new() -> Self {
        Self::starting_with(2)
    }

    fn starting_with(required: u64) -> Self {
        let rules = ProdRules {
            required,
            mallory: false,
        };
        World {
            commits: vec![Rc::new(Commit {
                id: "c0".into(),
                model: repo(rules, 0),
                rules,
                rules_change: "c0".into(),
                config_change: "c0".into(),
                bundle: 0,
            })],
            approval_files: BTreeMap::new(),
            record: None,
            state: BTreeMap::new(),
            reports: HashMap::new(),
            now: Utc.with_ymd_and_hms(2026, 12, 3, 9, 0, 0).unwrap(),
            trusted: rules,
        }
    }

    fn head(&self) -> &Commit {
        self.commits.last().unwrap()
    }

    fn apply(&mut self, op: &Op) {
        let head = self.head();
        let id = format!("c{}", self.commits.len());
        match op {
            Op::Rules(r) => {
                let commit = Commit {
                    model: repo(*r, head.bundle),
                    rules: *r,
                    rules_change: id.clone(),
                    config_change: head.config_change.clone(),
                    bundle: head.bundle,
                    id,
                };
                self.commits.push(Rc::new(commit));
            }
            Op::Config => {
                let commit = Commit {
                    model: repo(head.rules, head.bundle + 1),
                    rules: head.rules,
                    rules_change: head.rules_change.clone(),
                    config_change: id.clone(),
                    bundle: head.bundle + 1,
                    id,
                };
                self.commits.push(Rc::new(commit));
            }
            Op::Pass => self.pass(),
            Op::Approve { who, rules } => {
                let commit = if *rules {
                    head.rules_change.clone()
                } else {
                    head.config_change.clone()
                };
                let a = Approval {
                    fleet: "t".into(),
                    environment: "prod".into(),
                    commit: commit.clone(),
                    approver: PEOPLE[*who].into(),
                    at: self.now,
                };
                let mut envelope = a.envelope();
                envelope.sign(&key(*who)).unwrap();
                self.approval_files.insert(
                    approval_path("prod", &commit, PEOPLE[*who]),
                    envelope.to_json(),
                );
            }
        }
    }

    /// Approvals of `(prod, commit)` by people the model's rules allow.
    fn valid_approvals(&self, commit: &str) -> usize {
        let users = self.trusted.users();
        users
            .iter()
            .filter(|u| {
                self.approval_files
                    .contains_key(&approval_path("prod", commit, u))
            })
            .count()
    }

    fn pass(&mut self) {
        let head = Rc::clone(self.commits.last().unwrap());
        let now = self.now;
        let record = self
            .record
            .clone()
            .unwrap_or_else(|| rules::first_seen(&head.model, &head.id, now));
        let in_force = Rules::from_state(&record, |c| {
            self.commits.iter().find(|x| x.id == c).map(|x| &x.model)
        })
        .unwrap();
        let counted =
            gitfleet_policy::approvals::count(&head.model, &in_force, &self.approval_files);
        let decided = rules::decide(
            &record,
            &in_force,
            &head.model,
            &head.rules_change,
            &counted.approved,
            &BTreeMap::new(),
            now,
        );
        let again =
            gitfleet_policy::approvals::count(&head.model, &decided.rules, &self.approval_files);
        let approvals =
            gitfleet_policy::approvals::under(&decided, counted.approved, again.approved);

        // The model: prod takes the tip's rules when they differ and the
        // rules in force ask nothing, or enough of their approvers
        // approved the commit that changed them.
        let tip = head.rules.normal();
        if tip != self.trusted.normal()
            && (self.trusted.required == 0
                || self.valid_approvals(&head.rules_change) as u64 >= self.trusted.required)
        {
            self.trusted = tip;
        }
        let prod = decided.rules.env("prod").unwrap();
        assert_eq!(
            prod.approval_rule().map_or(0, |a| a.required.value),
            self.trusted.required,
            "the rules in force are the model's"
        );

        let targets = Targets::from_model(&head.model);
        let desired = BTreeMap::from([(
            "web".to_owned(),
            Desired::single(digest(head.bundle), head.config_change.clone(), None),
        )]);
        let p = plan(&Inputs {
            model: &head.model,
            targets: &targets,
            desired: &desired,
            state: &self.state,
            reports: &self.reports,
            approvals: &approvals,
            owners: &BTreeMap::new(),
            rules: &decided.rules,
            now,
        });
        for e in p.rollouts.iter().flat_map(|r| &r.environments) {
            if e.environment != "prod" || e.after.admitted == 0 {
                continue;
            }
            let first_admission = e
                .before
                .as_ref()
                .is_none_or(|b| b.admitted == 0 || b.target != e.after.target);
            if first_admission {
                let given = self.valid_approvals(&e.after.source_commit) as u64;
                assert!(
                    given >= self.trusted.required,
                    "prod admitted {} with {given} approval(s) while the rules in force ask {}\n{p}",
                    e.after.source_commit,
                    self.trusted.required
                );
            }
        }
        self.state = p.state();
        self.record = Some(decided.state);
        // Agents follow the manifests at once.
        for n in &head.model.nodes {
            let id = &n.doc.id.value;
            let report = self.reports.entry(id.clone()).or_insert(Observation {
                at: now,
                healthy: true,
                ..Observation::default()
            });
            for cr in p.channel_rollouts(&head.model, &n.doc.environment.value) {
                let run = if cr.includes(id) {
                    Some(cr.bundle.clone())
                } else {
                    cr.previous.clone()
                };
                report.set_active(&cr.name, run.map(|b| b.digest));
            }
            report.at = now;
        }
        self.now += Duration::seconds(60);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn no_environment_admits_a_change_with_fewer_approvals_than_its_rules_in_force_ask(
        required in 0u64..4,
        ops in proptest::collection::vec(op(), 1..40)
    ) {
        let mut w = World::starting_with(required);
        w.pass();
        for op in &ops {
            w.apply(op);
        }
        for _ in 0..3 {
            w.pass();
        }
    }
}

/// The reproduction of the issue, as a sequence: prod waits for two
/// approvals; a commit deletes them; prod still waits until two approvals
/// of that commit are given, and then needs none for what follows.
#[test]
fn deleting_prods_approvals_needs_two_approvals_of_the_deleting_commit() {
    let mut w = World::new();
    w.pass();
    w.apply(&Op::Config);
    for _ in 0..4 {
        w.pass();
    }
    let prod = |w: &World| w.state["web"].environments["prod"].clone();
    assert_eq!(prod(&w).admitted, 0, "{}", prod(&w).reason);
    w.apply(&Op::Rules(ProdRules {
        required: 0,
        mallory: false,
    }));
    for _ in 0..4 {
        w.pass();
    }
    assert_eq!(prod(&w).admitted, 0, "{}", prod(&w).reason);
    let pending = w.record.as_ref().unwrap().environments["prod"]
        .pending
        .clone()
        .unwrap();
    assert_eq!(pending.commit, "c2");
    // One approval is not enough; mallory is nobody's approver.
    w.apply(&Op::Approve {
        who: 0,
        rules: true,
    });
    w.apply(&Op::Approve {
        who: 3,
        rules: true,
    });
    w.pass();
    assert_eq!(prod(&w).admitted, 0, "{}", prod(&w).reason);
    w.apply(&Op::Approve {
        who: 1,
        rules: true,
    });
    w.pass();
    w.pass();
    assert_eq!(w.record.as_ref().unwrap().environments["prod"].commit, "c2");
    assert!(prod(&w).admitted > 0, "{}", prod(&w).reason);
    // Later changes need none.
    w.apply(&Op::Config);
    for _ in 0..4 {
        w.pass();
    }
    assert_eq!(prod(&w).source_commit, "c3");
    assert!(prod(&w).admitted > 0, "{}", prod(&w).reason);
}
