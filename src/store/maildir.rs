//! Maildir scanning: the snapshot a session sees, fixed at login.
//!
//! Blocking work (readdir, rename, reading files whose size is not in their
//! name): runs on the worker pool only.
//!
//! - Mail in `new/` is moved to `cur/` with the `:2,` info suffix, as every
//!   Maildir reader (and Dovecot) does, so the next session finds it in `cur/`.
//! - Order is delivery order: the leading timestamp of the base name, then the
//!   whole base name. It is stable across sessions and restarts.
//! - Sizes come from the `,W=` field (Dovecot's virtual size: the size with CRLF
//!   line ends) when present; otherwise the file is read once and the result is
//!   kept in a process-wide cache keyed by base name, so STAT never rereads.
//! - The UIDL is the base name (the file name before `:`), which survives flag
//!   changes and renames; a base name that is not a valid UIDL (over 70 bytes,
//!   or bytes outside 0x21..=0x7E) is replaced by a stable digest of it.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use super::body::MessageMap;
use super::uidlist::{Record, UidlFormat, Uidlist};
use crate::protocol::Maildrop;

/// One message of a snapshot.
#[derive(Clone, Debug)]
pub struct Message {
    /// The file name inside `cur/` (or `new/` when `in_new`).
    pub file_name: Box<str>,
    /// The file stayed in `new/` (it could not be moved).
    pub in_new: bool,
    /// The unique-id listing value.
    pub uidl: Box<[u8]>,
    /// RFC 1939 size: octets with CRLF line ends.
    pub octets: u64,
    /// The size on disk, when known (`,S=` or from reading it).
    pub file_bytes: Option<u64>,
}

impl Message {
    /// The part of the file name before the `:info` suffix.
    pub fn base_name(&self) -> &str {
        base_name(&self.file_name)
    }

    /// True when the file is known to hold no bare LF (CRLF line ends
    /// throughout), so its bytes can go out as they are.
    pub fn is_crlf(&self) -> bool {
        self.file_bytes == Some(self.octets)
    }
}

/// The maildrop as it was at login.
#[derive(Debug)]
pub struct Snapshot {
    /// The Maildir directory (holding `cur/`, `new/`, `tmp/`).
    pub dir: PathBuf,
    /// Messages in POP3 order (message n is `messages[n - 1]`).
    pub messages: Vec<Message>,
}

impl Snapshot {
    /// Where message `index` lives.
    pub fn path(&self, index: usize) -> PathBuf {
        let m = &self.messages[index];
        self.dir
            .join(if m.in_new { "new" } else { "cur" })
            .join(&*m.file_name)
    }
}

impl Maildrop for Arc<Snapshot> {
    fn count(&self) -> usize {
        self.messages.len()
    }
    fn octets(&self, index: usize) -> u64 {
        self.messages[index].octets
    }
    fn uidl(&self, index: usize) -> &[u8] {
        &self.messages[index].uidl
    }
}

/// Creates `dir` as an empty Maildir when it does not exist (Dovecot does the
/// same at first login).
pub fn create(dir: &Path) -> io::Result<()> {
    for sub in ["cur", "new", "tmp"] {
        fs::create_dir_all(dir.join(sub))?;
    }
    Ok(())
}

#[cfg(test)]
pub(crate) fn open(dir: &Path) -> io::Result<Snapshot> {
    create(dir)?;
    scan(dir, &UidlFormat::parse("%f").unwrap())
}

/// Reads `new/` and `cur/` and builds the snapshot.
pub fn scan(dir: &Path, format: &UidlFormat) -> io::Result<Snapshot> {
    let mut names = Vec::new();
    for name in list(&dir.join("new"))? {
        let moved = format!("{name}:2,");
        match fs::rename(dir.join("new").join(&name), dir.join("cur").join(&moved)) {
            Ok(()) => names.push((moved, false)),
            // Another reader moved it first; it is in cur/ now, under a name we
            // have not listed. The next session sees it.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(dir = %dir.display(), file = %name, error = %e, "cannot move new mail to cur/");
                names.push((name, true));
            }
        }
    }
    names.extend(list(&dir.join("cur"))?.into_iter().map(|n| (n, false)));
    let uidlist = Uidlist::read(dir)?;
    let mut keyed = Vec::with_capacity(names.len());
    for (name, in_new) in names {
        let record = uidlist
            .as_ref()
            .and_then(|l| l.records.get(base_name(&name)));
        // Dovecot's order (its UIDs, or a migration's saved order) first; mail
        // Dovecot has not numbered yet follows in delivery order.
        let key = match record {
            Some(r) => (0, u64::from(r.pop3_order.unwrap_or(r.uid)), String::new()),
            None => {
                let (time, base) = order_key(base_name(&name));
                (1, time, base.to_string())
            }
        };
        let uidl = uidl(
            base_name(&name),
            record,
            uidlist.as_ref().map(|l| l.uid_validity),
            format,
        );
        keyed.push((key, message(dir, name, in_new, uidl)?));
    }
    keyed.sort_by(|a, b| a.0.cmp(&b.0));
    let mut messages: Vec<Message> = keyed.into_iter().map(|(_, m)| m).collect();
    messages.dedup_by(|a, b| a.base_name() == b.base_name());
    Ok(Snapshot {
        dir: dir.to_path_buf(),
        messages,
    })
}

/// The UIDL: a migration's saved one, else the template (which may need the
/// message's Dovecot UID), else the base name.
fn uidl(
    base: &str,
    record: Option<&Record>,
    uid_validity: Option<u32>,
    format: &UidlFormat,
) -> Box<[u8]> {
    if let Some(saved) = record.and_then(|r| r.pop3_uidl.as_deref()) {
        return valid_uidl(saved);
    }
    match format.render(base, record.map(|r| r.uid), uid_validity) {
        Some(rendered) => valid_uidl(&rendered),
        None => valid_uidl(base),
    }
}

/// File names in a Maildir subdirectory, without dot files.
fn list(sub: &Path) -> io::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in fs::read_dir(sub)? {
        let entry = entry?;
        let Ok(name) = entry.file_name().into_string() else {
            tracing::warn!(dir = %sub.display(), "skipping a file whose name is not UTF-8");
            continue;
        };
        if !name.starts_with('.') {
            names.push(name);
        }
    }
    Ok(names)
}

fn message(dir: &Path, file_name: String, in_new: bool, uidl: Box<[u8]>) -> io::Result<Message> {
    let base = base_name(&file_name);
    let s_field = field(base, 'S');
    let (octets, file_bytes) = match (field(base, 'W'), s_field) {
        (Some(w), s) => (w, s),
        (None, _) => {
            let path = dir
                .join(if in_new { "new" } else { "cur" })
                .join(&file_name);
            let sizes = measured_sizes(dir, base, &path)?;
            (sizes.octets, Some(sizes.file_bytes))
        }
    };
    Ok(Message {
        file_name: file_name.into(),
        in_new,
        uidl,
        octets,
        file_bytes,
    })
}

/// `1700000000.M1P2.host,S=10,W=12:2,S` → `1700000000.M1P2.host,S=10,W=12`.
pub fn base_name(file_name: &str) -> &str {
    file_name.split(':').next().unwrap_or(file_name)
}

/// The numeric value of a `,X=n` field of the base name.
fn field(base: &str, key: char) -> Option<u64> {
    base.split(',')
        .skip(1)
        .find_map(|f| f.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

/// Delivery order: leading decimal timestamp, then the name.
fn order_key(base: &str) -> (u64, &str) {
    let digits = base.bytes().take_while(u8::is_ascii_digit).count();
    (base[..digits].parse().unwrap_or(u64::MAX), base)
}

const UIDL_BYTES_MAX: usize = 70;

/// `uidl` if it is a valid RFC 1939 unique-id, else a stable digest of it.
fn valid_uidl(base: &str) -> Box<[u8]> {
    let valid = !base.is_empty()
        && base.len() <= UIDL_BYTES_MAX
        && base.bytes().all(|b| (0x21..=0x7e).contains(&b));
    if valid {
        return base.as_bytes().into();
    }
    // Stable across sessions and restarts: a digest of the name, in hex.
    let digest = ring::digest::digest(&ring::digest::SHA256, base.as_bytes());
    let mut hex = Vec::with_capacity(40);
    for b in &digest.as_ref()[..20] {
        hex.extend_from_slice(format!("{b:02x}").as_bytes());
    }
    hex.into()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Sizes {
    file_bytes: u64,
    octets: u64,
}

/// How many measured sizes the process keeps before starting over. At about
/// 100 bytes an entry this bounds the cache near 100 MiB.
const SIZE_CACHE_ENTRIES_MAX: usize = 1 << 20;

/// Keyed by (Maildir, base name): base names are unique within a Maildir,
/// and survive the renames that flag changes make.
static SIZE_CACHE: Mutex<Option<HashMap<SizeKey, Sizes>>> = Mutex::new(None);

/// (Maildir, base name).
type SizeKey = (PathBuf, Box<str>);

/// Sizes of a file whose name does not carry them: read once per process.
fn measured_sizes(dir: &Path, base: &str, path: &Path) -> io::Result<Sizes> {
    let key = (dir.to_path_buf(), Box::<str>::from(base));
    if let Some(hit) = SIZE_CACHE.lock().as_ref().and_then(|c| c.get(&key)) {
        return Ok(*hit);
    }
    let map = MessageMap::open(path)?;
    let sizes = map
        .read_guarded(|bytes| Sizes {
            file_bytes: bytes.len() as u64,
            octets: crate::wire::scan(bytes).crlf_octets,
        })
        .map_err(|_| {
            io::Error::other(format!(
                "{} was truncated while it was measured",
                path.display()
            ))
        })?;
    let mut cache = SIZE_CACHE.lock();
    let cache = cache.get_or_insert_with(HashMap::new);
    if cache.len() >= SIZE_CACHE_ENTRIES_MAX {
        cache.clear();
    }
    cache.insert(key, sizes);
    Ok(sizes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f() -> UidlFormat {
        UidlFormat::parse("%f").unwrap()
    }

    fn write(dir: &Path, sub: &str, name: &str, body: &[u8]) {
        fs::write(dir.join(sub).join(name), body).unwrap();
    }

    #[test]
    fn scan_orders_sizes_and_moves_new_mail() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("Maildir");
        open(&dir).unwrap();
        write(&dir, "cur", "1700000002.M2P1.h,S=4,W=6:2,S", b"a\nb\n");
        write(&dir, "new", "1700000003.M3P1.h", b"x\r\ny\nz");
        write(&dir, "cur", "1700000001.M1P1.h:2,", b"hello\n");
        write(&dir, "cur", ".hidden", b"nope");
        write(&dir, "tmp", "1700000000.tmp", b"half written");
        let snap = scan(&dir, &f()).unwrap();
        let names: Vec<&str> = snap.messages.iter().map(Message::base_name).collect();
        assert_eq!(
            names,
            [
                "1700000001.M1P1.h",
                "1700000002.M2P1.h,S=4,W=6",
                "1700000003.M3P1.h"
            ]
        );
        let octets: Vec<u64> = snap.messages.iter().map(|m| m.octets).collect();
        assert_eq!(octets, [7, 6, 7]);
        assert!(!dir.join("new/1700000003.M3P1.h").exists());
        assert!(dir.join("cur/1700000003.M3P1.h:2,").exists());
        assert_eq!(fs::read(snap.path(2)).unwrap(), b"x\r\ny\nz");
        // A second scan sees the same order and UIDLs.
        let again = scan(&dir, &f()).unwrap();
        let uidls: Vec<&[u8]> = again.messages.iter().map(|m| &*m.uidl).collect();
        assert_eq!(
            uidls,
            names.iter().map(|n| n.as_bytes()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn crlf_files_are_recognised_from_name_or_content() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("M");
        open(&dir).unwrap();
        write(&dir, "cur", "1.a,S=4,W=4:2,", b"a\r\n\r");
        write(&dir, "cur", "2.b:2,", b"a\r\nb\r\n");
        write(&dir, "cur", "3.c:2,", b"a\nb\r\n");
        let snap = scan(&dir, &f()).unwrap();
        let crlf: Vec<bool> = snap.messages.iter().map(Message::is_crlf).collect();
        assert_eq!(crlf, [true, true, false]);
    }

    #[test]
    fn invalid_base_names_get_a_stable_digest_uidl() {
        let long = "1".repeat(71);
        let u = valid_uidl(&long);
        assert_eq!(u.len(), 40);
        assert_eq!(u, valid_uidl(&long));
        assert!(u.iter().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(&*valid_uidl("1.é.host"), &*valid_uidl("1.é.host"));
        assert_ne!(&*valid_uidl("1.é.host"), "1.é.host".as_bytes());
        assert_eq!(&*valid_uidl("1.M2.h,S=3"), b"1.M2.h,S=3");
    }

    #[test]
    fn missing_maildir_is_created_empty() {
        let tmp = tempfile::tempdir().unwrap();
        let snap = open(&tmp.path().join("new-user/Maildir")).unwrap();
        assert!(snap.messages.is_empty());
        assert!(tmp.path().join("new-user/Maildir/tmp").is_dir());
    }
}
