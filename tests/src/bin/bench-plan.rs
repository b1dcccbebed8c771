//! Benchmark (not a test): planning one rollout step over a generated
//! inventory of N nodes (default 1,000,000).
//!
//!   cargo run --release -p gitfleet-tests --bin bench-plan -- [NODES]
//!
//! Prints the time to build the targets (member hashes + sort), the time of
//! one `plan()` call that admits the next step, the baseline of hashing and
//! sorting N node ids alone in the same process, the ratio, peak RSS, and
//! how many objects the step writes. Goal (issue 4): <= 2 s, <= 1 GiB.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Instant;

use chrono::{TimeZone, Utc};
use gitfleet_policy::plan::{plan, Desired, Inputs, Members, Observation, Targets};
use gitfleet_policy::RepoFiles;
use gitfleet_schemas::state::{EnvState, Phase, RolloutState};
use gitfleet_schemas::trust::{member_hash, BundleRef};

fn peak_rss_mib() -> Option<f64> {
    proc_status_mib("VmHWM:")
}

fn rss_mib() -> f64 {
    proc_status_mib("VmRSS:").unwrap_or(0.0)
}

fn proc_status_mib(field: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn bundle(n: u8) -> BundleRef {
    BundleRef {
        digest: format!("sha256:{}", format!("{n:02x}").repeat(32)),
        length: 1000,
    }
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let now = Utc
        .with_ymd_and_hms(2026, 11, 23, 12, 0, 0)
        .single()
        .expect("valid time");

    // The fleet's documents; the inventory itself is generated below, so the
    // benchmark measures planning, not KDL parsing.
    let mut files = RepoFiles::new();
    files.insert("fleet.kdl", "version 1\nname \"bench\"\n");
    files.insert("environments.kdl", "version 1\nenvironment \"prod\"\n");
    files.insert(
        "configs/web/sentinel.kdl",
        "system { worker-threads 1; }\nlisteners { listener \"h\" { address \"127.0.0.1:8080\"; protocol \"http\"; }; }\n",
    );
    files.insert(
        "rollouts/web.kdl",
        "version 1\nconfig \"web\"\nselector role=\"web\"\nstep percent=1\nstep percent=10\nstep percent=50\nstep percent=100\nmax-unavailable 50000\nbake \"1m\"\ngates { healthy; max-error-rate 0.01; }\n",
    );
    let model = gitfleet_policy::check(&files).model;
    let ids: Vec<String> = (0..n).map(|i| format!("node-{i:07}")).collect();

    // Baseline: the least any planner must do, hash and order N ids.
    let t = Instant::now();
    let mut hashes: Vec<(u64, &str)> = ids
        .iter()
        .map(|id| (member_hash("web", id), id.as_str()))
        .collect();
    hashes.sort_unstable();
    let baseline = t.elapsed();
    drop(hashes);

    let t = Instant::now();
    let mut targets = Targets::default();
    targets.insert("web", "prod", Members::new("web", ids.iter().cloned()));
    let build_targets = t.elapsed();

    // Step 1 (1 %) done and verified: every admitted node reports the new
    // bundle, healthy, with metrics; the rest run the old one.
    let members = targets.get("web", "prod").expect("targets inserted");
    let step1 = (n as u64).div_ceil(100);
    let old = bundle(1);
    let new = bundle(2);
    let mut reports: HashMap<String, Observation> = HashMap::with_capacity(n);
    for (i, id) in members.nodes().iter().enumerate() {
        let digest = if (i as u64) < step1 {
            &new.digest
        } else {
            &old.digest
        };
        reports.insert(
            id.clone(),
            Observation {
                at: now,
                active: vec![("web".to_owned(), digest.clone())],
                healthy: true,
                error_rate: Some(0.001),
                ..Observation::default()
            },
        );
    }
    let state = BTreeMap::from([(
        "web".to_owned(),
        RolloutState {
            format: 1,
            environments: BTreeMap::from([(
                "prod".to_owned(),
                EnvState {
                    target: new.clone(),
                    source_commit: "c2".into(),
                    changed_from: None,
                    previous: Some(old),
                    phase: Phase::Verifying,
                    step: 1,
                    admitted: step1,
                    on_target: None,
                    since: now - chrono::Duration::minutes(5),
                    reason: String::new(),
                    failed_nodes: vec![],
                    proxy: None,
                    variants: Default::default(),
                },
            )]),
        },
    )]);
    let desired = BTreeMap::from([("web".to_owned(), Desired::single(new, "c2".into(), None))]);
    let approvals = BTreeSet::new();
    let rules = gitfleet_policy::rules::Rules::of_model(&model, "c0");
    let rss_inputs = rss_mib();
    let inputs = Inputs {
        model: &model,
        targets: &targets,
        desired: &desired,
        state: &state,
        reports: &reports,
        approvals: &approvals,
        owners: &BTreeMap::new(),
        rules: &rules,
        now,
    };

    let t = Instant::now();
    let p = plan(&inputs);
    let planning = t.elapsed();
    let rss_after = rss_mib();

    let e = &p.rollouts[0].environments[0];
    let manifests = p
        .rollouts
        .iter()
        .flat_map(|r| &r.environments)
        .filter(|e| e.changed())
        .count();
    println!("nodes                      {n}");
    println!(
        "plan                       {} -> {} step {} ({} admitted)",
        e.before.as_ref().map_or(Phase::Pending, |b| b.phase),
        e.after.phase,
        e.after.step,
        e.after.admitted
    );
    println!("baseline (hash + sort ids) {:.3} s", baseline.as_secs_f64());
    println!(
        "build targets              {:.3} s",
        build_targets.as_secs_f64()
    );
    println!("plan()                     {:.3} s", planning.as_secs_f64());
    println!(
        "targets + plan vs baseline {:.2}x",
        (build_targets + planning).as_secs_f64() / baseline.as_secs_f64()
    );
    match peak_rss_mib() {
        Some(m) => println!("peak RSS (whole process)   {m:.0} MiB"),
        None => println!("peak RSS                   unavailable"),
    }
    println!("RSS with inputs built      {rss_inputs:.0} MiB (ids, reports, targets)");
    println!(
        "RSS added by plan()        {:.0} MiB",
        rss_after - rss_inputs
    );
    println!("objects written this step  {manifests} channel manifest(s) + 1 state commit, for {n} nodes");
    let total = (build_targets + planning).as_secs_f64();
    println!(
        "goal <= 2 s                {}",
        if total <= 2.0 { "PASS" } else { "FAIL" }
    );
}
