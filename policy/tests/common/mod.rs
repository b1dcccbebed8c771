//! Shared by the policy integration tests.

use std::path::Path;

use gitfleet_policy::repo::RepoFiles;

/// The example fleet repo, read into memory.
pub fn example_repo() -> RepoFiles {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/fleet-repo");
    let mut files = RepoFiles::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p
                    .strip_prefix(&root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                files.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    files
}
