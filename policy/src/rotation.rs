//! Key rotation pull requests, decided: for every node whose signed report
//! asks to move to a new WireGuard key (`gitfleet-agent rotate-key`) that
//! its node file does not list yet, the node file with the new key, as
//! the pull request that changes it would bring. Pure: reports and the
//! repo in, documents out; the reconciler pushes the branch and opens the
//! pull request, and merging it is the operator's call, as for any change.

use std::collections::BTreeMap;

use crate::checks::is_key_text;
use crate::model::FleetModel;

/// One node's key rotation pull request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RotationAsk {
    /// The node file, e.g. `nodes/edge-fra-1.kdl`.
    pub path: String,
    /// Its bytes with the new key.
    pub bytes: Vec<u8>,
    pub title: String,
    pub body: String,
}

/// Node id -> its key rotation pull request, for `requests` (node id ->
/// the key its verified report asks for) over the node files `file_of`
/// gives by path. A request that is no key, a node without a WireGuard key
/// in its file, a key another node or peer already has, or a file that
/// names the old key other than once asks for nothing.
pub fn wanted(
    model: &FleetModel,
    requests: &BTreeMap<String, String>,
    file_of: impl Fn(&str) -> Option<Vec<u8>>,
) -> BTreeMap<String, RotationAsk> {
    let taken: Vec<&str> = model
        .nodes
        .iter()
        .filter_map(|n| {
            n.doc
                .wireguard
                .as_ref()
                .map(|w| w.public_key.value.as_str())
        })
        .chain(
            model
                .meshes
                .values()
                .flat_map(|m| m.doc.peers.iter().map(|p| p.public_key.value.as_str())),
        )
        .collect();
    let mut out = BTreeMap::new();
    for node in &model.nodes {
        let id = &node.doc.id.value;
        let Some(next) = requests.get(id).map(String::as_str) else {
            continue;
        };
        let Some(wg) = &node.doc.wireguard else {
            continue;
        };
        let old = wg.public_key.value.as_str();
        if !is_key_text(next) || next == old || taken.contains(&next) {
            continue;
        }
        let Some(text) = file_of(&node.path).and_then(|b| String::from_utf8(b).ok()) else {
            continue;
        };
        let quoted = format!("\"{old}\"");
        if text.matches(&quoted).count() != 1 {
            continue;
        }
        out.insert(
            id.clone(),
            RotationAsk {
                path: node.path.clone(),
                bytes: text
                    .replacen(&quoted, &format!("\"{next}\""), 1)
                    .into_bytes(),
                title: format!("Rotate the WireGuard key of {id}"),
                body: format!(
                    "`{id}` asks, in its signed status report, to move to a new WireGuard key \
                     (made by `gitfleet-agent rotate-key` on the node; the private key never \
                     leaves it).\n\n- before: `{old}`\n- after: `{next}`\n\nOnce this is merged \
                     and rolled out, `{id}` switches its interface to the new key and the other \
                     members replace that one peer; their other sessions carry on. To keep the \
                     current key, close this and remove `wireguard.key.next` from the node's \
                     state directory, or the node goes on asking.\n"
                ),
            },
        );
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::repo::RepoFiles;

    const OLD: &str = "SNkgnF0XGvM7PGUHMPsVTCQozshsOwBbqBsjJYQ9Z04=";
    const NEW: &str = "HUEFj87k8L7OSHttz/kWiAL9hOTz6wOuQtbUMkHVjGM=";
    const OTHER: &str = "SLTdULopfRem/Ku4+l4Ze30s66nEV3dPpaZfunVmux4=";

    fn repo() -> RepoFiles {
        let mut files = RepoFiles::new();
        files.insert(
            "nodes/edge-1.kdl",
            format!("version 1\nid \"edge-1\"\nenvironment \"prod\"\nnode-key \"kuh0dwHEsBnYK092vgCoSr5R703wQVk0x5/ihE0g89A=\"\nwireguard public-key=\"{OLD}\" endpoint=\"198.51.100.1:51820\"\n"),
        );
        files.insert(
            "nodes/edge-2.kdl",
            format!("version 1\nid \"edge-2\"\nenvironment \"prod\"\nnode-key \"tlkyeYhA4W9PzLQN6ofSYyIr2dz+EY+W2DpMLqUzakA=\"\nwireguard public-key=\"{OTHER}\"\n"),
        );
        files
    }

    fn asking(node: &str, key: &str) -> BTreeMap<String, String> {
        BTreeMap::from([(node.to_owned(), key.to_owned())])
    }

    fn file_of(files: &RepoFiles) -> impl Fn(&str) -> Option<Vec<u8>> + '_ {
        |path| files.get(path).map(<[u8]>::to_vec)
    }

    #[test]
    fn a_node_asking_for_a_new_key_gets_its_file_with_that_key_only() {
        let files = repo();
        let model = crate::check::check(&files).model;
        let asks = wanted(&model, &asking("edge-1", NEW), file_of(&files));
        let ask = &asks["edge-1"];
        assert_eq!(ask.path, "nodes/edge-1.kdl");
        let before = std::str::from_utf8(files.get("nodes/edge-1.kdl").unwrap()).unwrap();
        let after = String::from_utf8(ask.bytes.clone()).unwrap();
        assert_eq!(after, before.replace(OLD, NEW));
        assert!(ask.title.contains("edge-1"));
        assert!(ask.body.contains(NEW) && ask.body.contains(OLD));
    }

    #[test]
    fn requests_that_are_no_key_already_listed_or_taken_ask_for_nothing() {
        let files = repo();
        let model = crate::check::check(&files).model;
        for (node, key) in [
            ("edge-1", OLD),
            ("edge-1", OTHER),
            ("edge-1", "not a key"),
            ("edge-1", "\"injected\""),
            ("edge-9", NEW),
        ] {
            assert!(
                wanted(&model, &asking(node, key), file_of(&files)).is_empty(),
                "{node} {key}"
            );
        }
    }
}
