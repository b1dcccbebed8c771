//! Which nodes a selector picks: labels, set-based requirements and
//! fleet.kdl's groups, resolved against the model; the same selector in the
//! form a channel manifest carries it (agents judge it again themselves);
//! and whether two selectors can ever pick the same node.

use std::collections::{BTreeMap, BTreeSet};

use gitfleet_schemas::fleet::Group;
use gitfleet_schemas::trust::ChannelRequirement;
use gitfleet_schemas::{NodeFile, Operator, Selector};

use crate::model::FleetModel;

/// fleet.kdl's group `name`.
pub fn group<'m>(model: &'m FleetModel, name: &str) -> Option<&'m Group> {
    model
        .fleet
        .as_ref()?
        .doc
        .groups
        .iter()
        .find(|g| g.name.value == name)
}

/// Whether `selector` picks `node`. A group fleet.kdl does not define
/// picks nothing (`gitfleet check` reports it).
pub fn selects(model: &FleetModel, selector: &Selector, node: &NodeFile) -> bool {
    selector.matches_labels(&node.labels)
        && selector.groups.iter().all(|g| {
            group(model, &g.value).is_some_and(|g| g.contains(&node.id.value, &node.labels))
        })
}

/// Indices of the nodes `selector` picks, in path order.
pub fn select(model: &FleetModel, selector: &Selector) -> Vec<usize> {
    model
        .nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| selects(model, selector, &n.doc))
        .map(|(i, _)| i)
        .collect()
}

/// A selector with its groups resolved: label equalities, requirements,
/// and the node list every listed group allows (their intersection).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Flat {
    pub labels: BTreeMap<String, String>,
    pub requirements: Vec<ChannelRequirement>,
    pub nodes: Option<BTreeSet<String>>,
}

impl Flat {
    /// `selector` with each of its groups' labels and requirements, or node
    /// lists, folded in. An unknown group allows no node.
    pub fn of(model: &FleetModel, selector: &Selector) -> Flat {
        let mut flat = Flat {
            labels: selector
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.value.clone()))
                .collect(),
            ..Flat::default()
        };
        flat.add_requirements(selector);
        for name in &selector.groups {
            let Some(g) = group(model, &name.value) else {
                flat.nodes = Some(BTreeSet::new());
                continue;
            };
            if g.nodes.is_empty() {
                for (k, v) in &g.selector.labels {
                    flat.requirements.push(ChannelRequirement {
                        key: k.clone(),
                        operator: Operator::In,
                        values: vec![v.value.clone()],
                    });
                }
                flat.add_requirements(&g.selector);
            } else {
                let listed: BTreeSet<String> = g.nodes.iter().map(|n| n.value.clone()).collect();
                flat.nodes = Some(match flat.nodes.take() {
                    Some(before) => before.intersection(&listed).cloned().collect(),
                    None => listed,
                });
            }
        }
        flat.requirements.sort();
        flat.requirements.dedup();
        flat
    }

    fn add_requirements(&mut self, selector: &Selector) {
        self.requirements
            .extend(selector.requirements.iter().map(|r| ChannelRequirement {
                key: r.key.value.clone(),
                operator: r.operator,
                values: r.values.iter().map(|v| v.value.clone()).collect(),
            }));
    }

    /// A node's labels under which both `self` and `other` hold, written
    /// `k=v` (`k=<any but a,b>` where any other value does), or `None`
    /// when no labels can satisfy both. Node lists are not judged: the
    /// nodes they name exist and are judged one by one.
    pub fn common_labels(&self, other: &Flat) -> Option<String> {
        let mut keys: BTreeMap<&str, Allowed> = BTreeMap::new();
        for flat in [self, other] {
            for (k, v) in &flat.labels {
                keys.entry(k).or_default().meet(Operator::In, &[v.as_str()]);
            }
            for r in &flat.requirements {
                let values: Vec<&str> = r.values.iter().map(String::as_str).collect();
                keys.entry(&r.key).or_default().meet(r.operator, &values);
            }
        }
        let mut witness = Vec::new();
        for (k, allowed) in keys {
            witness.push(match allowed.example()? {
                Example::Absent => continue,
                Example::Value(v) => format!("{k}={v}"),
                Example::AnyBut(but) if but.is_empty() => format!("{k}=<any>"),
                Example::AnyBut(but) => format!("{k}=<any but {}>", but.join(",")),
            });
        }
        Some(if witness.is_empty() {
            "(any labels)".to_owned()
        } else {
            witness.join(",")
        })
    }

    /// The requirements a channel manifest carries for this selector.
    pub fn into_channel(
        self,
    ) -> (
        BTreeMap<String, String>,
        Vec<ChannelRequirement>,
        Option<Vec<String>>,
    ) {
        (
            self.labels,
            self.requirements,
            self.nodes.map(|n| n.into_iter().collect()),
        )
    }
}

/// What the labels of one key may be under a conjunction of requirements.
#[derive(Debug)]
struct Allowed {
    /// `Some(set)`: only these values; `None`: any value but `excluded`.
    only: Option<BTreeSet<String>>,
    excluded: BTreeSet<String>,
    absent_ok: bool,
}

impl Default for Allowed {
    fn default() -> Self {
        Allowed {
            only: None,
            excluded: BTreeSet::new(),
            absent_ok: true,
        }
    }
}

enum Example {
    Absent,
    Value(String),
    AnyBut(Vec<String>),
}

impl Allowed {
    fn meet(&mut self, op: Operator, values: &[&str]) {
        match op {
            Operator::In => {
                let set: BTreeSet<String> = values.iter().map(|v| (*v).to_owned()).collect();
                self.only = Some(match self.only.take() {
                    Some(before) => before.intersection(&set).cloned().collect(),
                    None => set,
                });
                self.absent_ok = false;
            }
            Operator::NotIn => self.excluded.extend(values.iter().map(|v| (*v).to_owned())),
            Operator::Exists => self.absent_ok = false,
            Operator::NotExists => self.only = Some(BTreeSet::new()),
        }
    }

    /// A label (or its absence) that meets every requirement, if one can.
    fn example(&self) -> Option<Example> {
        if self.absent_ok {
            return Some(Example::Absent);
        }
        match &self.only {
            Some(only) => only
                .iter()
                .find(|v| !self.excluded.contains(*v))
                .map(|v| Example::Value(v.clone())),
            // Label values are unbounded: one outside `excluded` exists.
            None => Some(Example::AnyBut(self.excluded.iter().cloned().collect())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(key: &str, operator: Operator, values: &[&str]) -> ChannelRequirement {
        ChannelRequirement {
            key: key.to_owned(),
            operator,
            values: values.iter().map(|v| (*v).to_owned()).collect(),
        }
    }

    fn flat(labels: &[(&str, &str)], requirements: Vec<ChannelRequirement>) -> Flat {
        Flat {
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            requirements,
            nodes: None,
        }
    }

    #[test]
    fn different_values_of_one_label_never_overlap() {
        let a = flat(&[("role", "web")], vec![]);
        let b = flat(&[("role", "api")], vec![]);
        assert_eq!(a.common_labels(&b), None);
    }

    #[test]
    fn selectors_on_different_labels_can_pick_one_node() {
        let a = flat(&[("role", "web")], vec![]);
        let b = flat(&[("region", "fra")], vec![]);
        assert_eq!(a.common_labels(&b).as_deref(), Some("region=fra,role=web"));
    }

    #[test]
    fn in_and_not_in_the_same_values_never_overlap() {
        let a = flat(&[], vec![req("region", Operator::In, &["fra", "ams"])]);
        let b = flat(&[], vec![req("region", Operator::NotIn, &["fra", "ams"])]);
        assert_eq!(a.common_labels(&b), None);
        let c = flat(&[], vec![req("region", Operator::NotIn, &["fra"])]);
        assert_eq!(a.common_labels(&c).as_deref(), Some("region=ams"));
    }

    #[test]
    fn exists_and_not_exists_never_overlap() {
        let a = flat(&[], vec![req("gpu", Operator::Exists, &[])]);
        let b = flat(&[], vec![req("gpu", Operator::NotExists, &[])]);
        assert_eq!(a.common_labels(&b), None);
        let c = flat(&[], vec![req("gpu", Operator::NotIn, &["a100"])]);
        assert_eq!(a.common_labels(&c).as_deref(), Some("gpu=<any but a100>"));
    }

    #[test]
    fn an_empty_selector_overlaps_everything() {
        let all = flat(&[], vec![]);
        assert_eq!(all.common_labels(&all).as_deref(), Some("(any labels)"));
        let b = flat(&[], vec![req("tier", Operator::NotIn, &["canary"])]);
        assert_eq!(all.common_labels(&b).as_deref(), Some("(any labels)"));
    }

    proptest::proptest! {
        /// Whatever labels a node carries, when it meets both selectors
        /// they are never called disjoint.
        #[test]
        fn a_node_meeting_both_selectors_is_never_called_disjoint(
            node in proptest::collection::btree_map("[ab]", "[xyz]", 0..3),
            ra in proptest::collection::vec(("[ab]", 0..4u8, proptest::collection::vec("[xyz]", 1..3)), 0..3),
            rb in proptest::collection::vec(("[ab]", 0..4u8, proptest::collection::vec("[xyz]", 1..3)), 0..3),
        ) {
            let op = |o: u8| [Operator::In, Operator::NotIn, Operator::Exists, Operator::NotExists][usize::from(o)];
            let mk = |rs: &Vec<(String, u8, Vec<String>)>| Flat {
                requirements: rs.iter().map(|(k, o, v)| ChannelRequirement {
                    key: k.clone(),
                    operator: op(*o),
                    values: if matches!(op(*o), Operator::In | Operator::NotIn) { v.clone() } else { vec![] },
                }).collect(),
                ..Flat::default()
            };
            let (a, b) = (mk(&ra), mk(&rb));
            let holds = |f: &Flat| f.requirements.iter().all(|r| {
                r.operator.holds(node.get(&r.key).map(String::as_str), r.values.iter().map(String::as_str))
            });
            if holds(&a) && holds(&b) {
                proptest::prop_assert!(a.common_labels(&b).is_some());
            }
        }
    }
}
