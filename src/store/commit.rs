//! The UPDATE state: remove the messages a session marked, and nothing else.
//!
//! Runs on the worker pool after QUIT. A file that is gone from its snapshot
//! path may have been renamed by another reader (an IMAP flag change rewrites
//! the `:2,` suffix): it is found again by its base name. A file that is gone
//! altogether was removed by someone else, which is what we wanted.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::fs;
use std::io;

use super::maildir::{Snapshot, base_name};

/// Removes messages `deleted` (0-based) of `snapshot`. Returns how many could
/// not be removed (each cause is logged).
pub fn commit(snapshot: &Snapshot, deleted: &[usize]) -> usize {
    let mut renamed: Option<HashMap<String, String>> = None;
    let mut failed = 0;
    for &index in deleted {
        let path = snapshot.path(index);
        let result = match fs::remove_file(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let base = snapshot.base_name(index);
                let names = renamed.get_or_insert_with(|| current_names(snapshot));
                match names.get(base) {
                    Some(name) => fs::remove_file(snapshot.dir.join("cur").join(name)),
                    None => Ok(()),
                }
            }
            other => other,
        };
        if let Err(e) = result {
            tracing::error!(file = %path.display(), error = %e, "cannot remove deleted message");
            failed += 1;
        }
    }
    failed
}

/// Base name → file name of everything now in `cur/`.
fn current_names(snapshot: &Snapshot) -> HashMap<String, String> {
    let Ok(entries) = fs::read_dir(snapshot.dir.join("cur")) else {
        return HashMap::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .map(|name| (base_name(&name).to_string(), name))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::maildir;

    #[test]
    fn removes_exactly_the_marked_files_even_after_a_rename() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        maildir::open(dir).unwrap();
        for n in 1..=4 {
            fs::write(dir.join(format!("cur/{n}.m.h:2,")), b"x\n").unwrap();
        }
        let snap = maildir::scan(dir, &crate::store::UidlFormat::default()).unwrap();
        // Another reader sets a flag on message 3 and someone removes message 4.
        fs::rename(dir.join("cur/3.m.h:2,"), dir.join("cur/3.m.h:2,S")).unwrap();
        fs::remove_file(dir.join("cur/4.m.h:2,")).unwrap();
        assert_eq!(commit(&snap, &[0, 2, 3]), 0);
        let mut left: Vec<String> = fs::read_dir(dir.join("cur"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["2.m.h:2,"]);
    }
}
