//! The UPDATE state: remove the messages a session marked, and nothing else.
//!
//! Runs on the worker pool after QUIT. A file that is gone from its snapshot
//! path may have been renamed by another reader (an IMAP flag change rewrites
//! the `:2,` suffix): it is found again by its base name. A file that is gone
//! altogether was removed by someone else, which is what we wanted.
//!
//! A Maildir++ quota (`maildirsize`, kept by Dovecot's `quota = maildir`,
//! Courier and maildrop) is told what went: one line of negative bytes and
//! count appended, as every Maildir++ writer does. Without it the quota
//! would keep counting mail POP3 clients deleted, until deliveries bounce
//! for a mailbox that is empty.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::path::Path;

use super::maildir::{Snapshot, base_name};

/// The Maildir++ quota file, in the Maildir's top directory.
pub const MAILDIRSIZE_FILE: &str = "maildirsize";

/// Removes messages `deleted` (0-based) of `snapshot`. Returns how many could
/// not be removed (each cause is logged).
pub fn commit(snapshot: &Snapshot, deleted: &[usize]) -> usize {
    let mut renamed: Option<HashMap<String, String>> = None;
    let mut failed = 0;
    let (mut removed, mut removed_bytes) = (0u64, 0u64);
    for &index in deleted {
        let path = snapshot.path(index);
        // A size the name does not give is read before the file goes.
        let mut bytes = snapshot
            .file_bytes(index)
            .or_else(|| fs::symlink_metadata(&path).ok().map(|m| m.len()));
        let result = match fs::remove_file(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let base = snapshot.base_name(index);
                let names = renamed.get_or_insert_with(|| current_names(snapshot));
                match names.get(base) {
                    Some(name) => {
                        let now = snapshot.dir.join("cur").join(name);
                        if bytes.is_none() {
                            bytes = fs::symlink_metadata(&now).ok().map(|m| m.len());
                        }
                        fs::remove_file(now)
                    }
                    // Whoever removed it accounted for it.
                    None => continue,
                }
            }
            other => other,
        };
        match result {
            Ok(()) => {
                removed += 1;
                removed_bytes += bytes.unwrap_or(0);
            }
            Err(e) => {
                tracing::error!(file = %path.display(), error = %e, "cannot remove deleted message");
                failed += 1;
            }
        }
    }
    if removed > 0 {
        update_maildirsize(&snapshot.dir, removed_bytes, removed);
    }
    failed
}

/// Appends `-bytes -count` to the Maildir's `maildirsize` when it has one,
/// in one `write` to a file opened for appending (what makes concurrent
/// Maildir++ writers safe). No file: no quota, or one its next reader
/// recalculates; it is not created here. A failure is logged: the quota is
/// then high until a writer recalculates it, and no mail is at risk.
fn update_maildirsize(dir: &Path, bytes: u64, count: u64) {
    let path = dir.join(MAILDIRSIZE_FILE);
    let line = format!("-{bytes} -{count}\n");
    let result = fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .and_then(|mut file| file.write_all(line.as_bytes()));
    match result {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "cannot update the Maildir++ quota")
        }
    }
}

/// Gives messages `seen` (0-based) of `snapshot` the \Seen flag: `S` added
/// to the `:2,` info of their name in `cur/`, the letters kept in ASCII
/// order as the Maildir convention and Dovecot write them. A file renamed
/// meanwhile (another flag change) is found again by base name; a file
/// gone is left alone. A failure is logged and changes nothing else: a
/// flag is not worth failing a QUIT for.
pub fn mark_seen(snapshot: &Snapshot, seen: &[usize]) {
    let mut renamed: Option<HashMap<String, String>> = None;
    let cur = snapshot.dir.join("cur");
    for &index in seen {
        let mut name = snapshot.file_name(index).to_owned();
        let mut result = fs::rename(cur.join(&name), cur.join(with_seen(&name)));
        if matches!(&result, Err(e) if e.kind() == io::ErrorKind::NotFound) {
            let base = snapshot.base_name(index);
            let names = renamed.get_or_insert_with(|| current_names(snapshot));
            let Some(now) = names.get(base) else {
                continue;
            };
            name.clone_from(now);
            result = fs::rename(cur.join(&name), cur.join(with_seen(&name)));
        }
        if let Err(e) = result {
            tracing::warn!(file = %cur.join(&name).display(), error = %e, "cannot flag a retrieved message seen");
        }
    }
}

/// `name` with `S` among its flags (a name without `:2,` gets the info).
fn with_seen(name: &str) -> String {
    let (base, flags) = name.split_once(":2,").unwrap_or((name, ""));
    if flags.contains('S') {
        return name.to_owned();
    }
    let mut letters: Vec<char> = flags.chars().chain(['S']).collect();
    letters.sort_unstable();
    let flags: String = letters.into_iter().collect();
    format!("{base}:2,{flags}")
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

/// The names in `cur/`, sorted (for tests).
#[cfg(test)]
pub(crate) fn cur_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir.join("cur"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::maildir;

    /// A Maildir of four messages `cur/<n>.m.h:2,` and its snapshot.
    fn four(dir: &Path) -> Snapshot {
        maildir::open(dir).unwrap();
        for n in 1..=4 {
            fs::write(dir.join(format!("cur/{n}.m.h:2,")), b"x\n").unwrap();
        }
        maildir::scan(dir, &crate::store::UidlFormat::default()).unwrap()
    }

    #[test]
    fn removes_exactly_the_marked_files_even_after_a_rename() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let snap = four(dir);
        // Another reader sets a flag on message 3 and someone removes message 4.
        fs::rename(dir.join("cur/3.m.h:2,"), dir.join("cur/3.m.h:2,S")).unwrap();
        fs::remove_file(dir.join("cur/4.m.h:2,")).unwrap();
        assert_eq!(commit(&snap, &[0, 2, 3]), 0);
        assert_eq!(cur_names(dir), ["2.m.h:2,"]);
    }

    #[test]
    fn seen_is_added_in_order_and_survives_a_rename_by_another_reader() {
        assert_eq!(with_seen("1.m.h:2,"), "1.m.h:2,S");
        assert_eq!(with_seen("1.m.h:2,FR"), "1.m.h:2,FRS");
        assert_eq!(with_seen("1.m.h:2,RT"), "1.m.h:2,RST");
        assert_eq!(with_seen("1.m.h:2,Sa"), "1.m.h:2,Sa");
        assert_eq!(with_seen("1.m.h"), "1.m.h:2,S");
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let snap = four(dir);
        // An IMAP reader flags message 2 replied, and message 3 goes.
        fs::rename(dir.join("cur/2.m.h:2,"), dir.join("cur/2.m.h:2,R")).unwrap();
        fs::remove_file(dir.join("cur/3.m.h:2,")).unwrap();
        mark_seen(&snap, &[0, 1, 2]);
        assert_eq!(cur_names(dir), ["1.m.h:2,S", "2.m.h:2,RS", "4.m.h:2,"]);
    }

    /// The quota's totals: every line's bytes and count summed, as a
    /// Maildir++ reader does (the first line is the limit).
    fn quota_totals(dir: &Path) -> (i64, i64) {
        let text = fs::read_to_string(dir.join(MAILDIRSIZE_FILE)).unwrap();
        text.lines().skip(1).fold((0, 0), |(b, c), line| {
            let mut f = line.split_whitespace().map(|n| n.parse::<i64>().unwrap());
            (b + f.next().unwrap(), c + f.next().unwrap())
        })
    }

    #[test]
    fn the_maildir_quota_loses_what_was_removed_here_and_only_that() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        maildir::open(dir).unwrap();
        // Sizes from S= (as Dovecot names files), and one only on disk.
        fs::write(dir.join("cur/1.m.h,S=5:2,"), b"abcd\n").unwrap();
        fs::write(dir.join("cur/2.m.h,S=3,W=4:2,S"), b"ab\n").unwrap();
        fs::write(dir.join("cur/3.m.h,W=8:2,"), b"abcdef\n").unwrap();
        fs::write(dir.join("cur/4.m.h:2,"), b"a\n").unwrap();
        fs::write(dir.join(MAILDIRSIZE_FILE), "1000000S,100C\n17 4\n").unwrap();
        let snap = maildir::scan(dir, &crate::store::UidlFormat::default()).unwrap();
        // Message 4 is expunged by another program first: not ours to count.
        fs::remove_file(dir.join("cur/4.m.h:2,")).unwrap();
        // Message 3 (its size only on disk) is flagged by an IMAP reader.
        fs::rename(dir.join("cur/3.m.h,W=8:2,"), dir.join("cur/3.m.h,W=8:2,S")).unwrap();
        assert_eq!(commit(&snap, &[0, 2, 3]), 0);
        let text = fs::read_to_string(dir.join(MAILDIRSIZE_FILE)).unwrap();
        assert_eq!(text, "1000000S,100C\n17 4\n-12 -2\n");
        assert_eq!(quota_totals(dir), (5, 2));
        // Without a maildirsize nothing is created.
        fs::remove_file(dir.join(MAILDIRSIZE_FILE)).unwrap();
        let snap = maildir::scan(dir, &crate::store::UidlFormat::default()).unwrap();
        assert_eq!(commit(&snap, &[0]), 0);
        assert!(!dir.join(MAILDIRSIZE_FILE).exists());
    }
}
