//! The rules in force, read: the state branch's `rules.json` and the rule
//! files (fleet.kdl, environments.kdl) at each commit it names. What they
//! decide lives in `gitfleet_policy::rules`; this module only reads.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use gitfleet_policy::rules::{self, Rules, RulesError, RULE_FILES};
use gitfleet_policy::{FleetModel, RepoFiles};
use gitfleet_schemas::state::{RulesState, RULES_PATH};

use crate::git::{GitError, Mirror, StateFiles};

#[derive(Debug, thiserror::Error)]
pub enum RulesReadError {
    #[error("rules.json on the state branch is not valid")]
    Parse(#[source] serde_json::Error),
    #[error("reading the rules in force")]
    Git(#[from] GitError),
    #[error(transparent)]
    Record(#[from] RulesError),
    #[error("rules.json names `{commit}`, which is not a commit id")]
    NotACommit { commit: String },
}

/// The rules in force, with the record they come from.
#[derive(Clone, Debug)]
pub struct InForce {
    pub record: RulesState,
    pub rules: Rules,
    /// Whether the state branch had no record yet: the record is the
    /// branch tip's, as first seen.
    pub first: bool,
}

/// The record on the state branch, if there is one.
pub fn recorded(files: &StateFiles) -> Result<Option<RulesState>, RulesReadError> {
    files
        .get(RULES_PATH)
        .map(|bytes| serde_json::from_slice(bytes).map_err(RulesReadError::Parse))
        .transpose()
}

/// Reads rule files at the commits records name, once per commit.
#[derive(Debug, Default)]
pub struct RulesReader {
    models: HashMap<String, Arc<FleetModel>>,
    /// The last tip looked at, and the commit that last changed a rule
    /// file there.
    change_commit: Option<(git2::Oid, String)>,
}

impl RulesReader {
    /// fleet.kdl and environments.kdl at `commit`, read into a model (of
    /// those two files only: that is all rules are made of).
    pub fn model_at(
        &mut self,
        mirror: &Mirror,
        commit: &str,
    ) -> Result<Arc<FleetModel>, RulesReadError> {
        if let Some(m) = self.models.get(commit) {
            return Ok(Arc::clone(m));
        }
        let oid = git2::Oid::from_str(commit).map_err(|_| RulesReadError::NotACommit {
            commit: commit.to_owned(),
        })?;
        let mut files = RepoFiles::new();
        for path in RULE_FILES {
            if let Some(bytes) = mirror.blob_at(oid, path)? {
                files.insert(path, bytes);
            }
        }
        let model = Arc::new(gitfleet_policy::check(&files).model);
        // Records name a few commits; a long-running reconciler sees a new
        // one only when rules change.
        if self.models.len() > 64 {
            self.models.clear();
        }
        self.models.insert(commit.to_owned(), Arc::clone(&model));
        Ok(model)
    }

    /// The rules in force per the state branch; for a fleet without a
    /// record, those of `head`, first seen now.
    pub fn in_force(
        &mut self,
        mirror: &Mirror,
        files: &StateFiles,
        head: git2::Oid,
        head_model: &FleetModel,
        now: DateTime<Utc>,
    ) -> Result<InForce, RulesReadError> {
        let (record, first) = match recorded(files)? {
            Some(r) => (r, false),
            None => (rules::first_seen(head_model, &head.to_string(), now), true),
        };
        let mut models: HashMap<String, Arc<FleetModel>> = HashMap::new();
        for r in record.environments.values() {
            if !models.contains_key(&r.commit) {
                // A commit that cannot be read is reported by from_state.
                if let Ok(m) = self.model_at(mirror, &r.commit) {
                    models.insert(r.commit.clone(), m);
                }
            }
        }
        let rules = Rules::from_state(&record, |c| models.get(c).map(|m| &**m))?;
        Ok(InForce {
            record,
            rules,
            first,
        })
    }

    /// The commit that last changed a rule file at `head`: the change to
    /// the rules that approvals must name.
    pub fn change_commit(&mut self, mirror: &Mirror, head: git2::Oid) -> Result<String, GitError> {
        // Asked only while a change to the rules is pending; the walk goes
        // back to that change, once per tip.
        if let Some((at, c)) = &self.change_commit {
            if *at == head {
                return Ok(c.clone());
            }
        }
        let c = mirror.last_change_of(head, &RULE_FILES)?.to_string();
        self.change_commit = Some((head, c.clone()));
        Ok(c)
    }
}
