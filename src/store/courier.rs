//! Courier compatibility for UIDLs: reading the files Courier keeps in a
//! Maildir so that a tree Courier served keeps the UIDLs its POP3 clients
//! already know. shardpop only reads these files; it never writes them.
//!
//! What Courier's pop3d does (read from its source, `imap/pop3dserver.c`):
//!
//! - `courierpop3dsizelist` holds, for each message it has listed, the file
//!   name, the RFC 1939 size and a UID. The header is `/<version> <next uid>
//!   <uidvalidity>`; versions 2 and 3 are what Courier writes (3 adds a
//!   UTF-8 flag), lines `name size uid:uidv[:utf8]`. Older files, which the
//!   Dovecot migration script also accepts: version 1 (`/1 <next uid>`,
//!   lines `name size uid`) and version 0 (no header, lines `name size`).
//!   The name may contain spaces: the numbers are the last two fields.
//! - The UIDL of a listed message is `UID<uid>-<uidv>`, or `UID<uid>` when
//!   the UIDVALIDITY is 0, or, for a UID of 0 (version 0 lists), the base
//!   file name with every byte outside 0x21..=0x7E and `'`, `"` and `+`
//!   written as `+XX` (upper-case hex).
//! - Courier's POP3 order is the order of the list (it sorts by the leading
//!   timestamp of the name, then the name, and writes the list in that order).
//! - `courierimapuiddb` is Courier IMAP's: `1 <uidvalidity> <next uid>`, then
//!   `<uid> <file name>`. Courier's pop3d does not read it; it gives the IMAP
//!   UID and UIDVALIDITY to `pop3_uidl_format` (`%u`, `%v`) for messages the
//!   POP3 list does not hold, as Dovecot does after its migration script
//!   has copied those UIDs into `dovecot-uidlist`.
//!
//! Both files become one [`Uidlist`], the form the rest of the store already
//! reads for Dovecot: a POP3 list entry is a record with a saved POP3 UIDL
//! and a POP3 order (its line), exactly what Dovecot's
//! `courier-dovecot-migrate.pl` writes as `P` and `O` fields. Every parser
//! here takes any bytes: a broken line is skipped, a broken header makes the
//! whole file count as absent (as Courier itself does), never a panic.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::io;
use std::path::Path;

use super::uidlist::{Record, Uidlist};

/// Courier pop3d's list of sizes and UIDs.
pub const POP3_LIST_FILE: &str = "courierpop3dsizelist";
/// Courier IMAP's UID database.
pub const IMAP_UIDDB_FILE: &str = "courierimapuiddb";

/// Files larger than this are not Courier's (a list line is under 300 bytes;
/// this allows some three million messages) and are ignored, so a stray
/// huge file cannot exhaust memory at login.
pub const FILE_BYTES_MAX: u64 = 1 << 30;

/// One message of a `courierpop3dsizelist`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pop3Entry {
    /// The base file name (before `:`).
    pub base: Box<str>,
    /// The UIDL Courier's pop3d sends for it.
    pub uidl: Box<str>,
}

/// A parsed `courierpop3dsizelist`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pop3List {
    /// The list's version (0 to 3).
    pub version: u8,
    /// The UIDVALIDITY of the header (0 when it has none).
    pub uid_validity: u64,
    /// Entries in Courier's POP3 order.
    pub entries: Vec<Pop3Entry>,
}

impl Pop3List {
    /// Parses the bytes of the file; `None` for a header Courier would not
    /// accept either.
    pub fn parse(bytes: &[u8]) -> Option<Pop3List> {
        let mut lines = bytes.split(|&b| b == b'\n');
        let first = lines.next()?;
        let (version, uid_validity, first_is_entry) = match first.strip_prefix(b"/") {
            Some(header) => {
                let (version, uid_validity) = parse_header(header)?;
                (version, uid_validity, false)
            }
            None => (0, 0, true),
        };
        let mut list = Pop3List {
            version,
            uid_validity,
            entries: Vec::new(),
        };
        let first = first_is_entry.then_some(first);
        for line in first.into_iter().chain(lines) {
            if let Some(entry) = parse_entry(version, line) {
                list.entries.push(entry);
            }
        }
        Some(list)
    }
}

/// `<version> <next uid> [<uidvalidity>]` (after the `/`).
fn parse_header(header: &[u8]) -> Option<(u8, u64)> {
    let text = std::str::from_utf8(header).ok()?.trim_end_matches('\r');
    let mut fields = text.split(' ');
    let version: u8 = fields.next()?.parse().ok()?;
    let _next_uid: u64 = fields.next()?.parse().ok()?;
    let uid_validity = match (version, fields.next()) {
        (1, None) => 0,
        (2 | 3, Some(v)) => v.parse().ok()?,
        _ => return None,
    };
    fields.next().is_none().then_some((version, uid_validity))
}

/// One list line; `None` for a line Courier would skip.
fn parse_entry(version: u8, line: &[u8]) -> Option<Pop3Entry> {
    let line = std::str::from_utf8(line).ok()?;
    let line = line.strip_suffix('\r').unwrap_or(line);
    let (rest, last) = line.rsplit_once(' ')?;
    let (name, uid, uid_validity) = if version == 0 {
        let _size: u64 = last.parse().ok()?;
        (rest, 0, 0)
    } else {
        let (name, size) = rest.rsplit_once(' ')?;
        let _size: u64 = size.parse().ok()?;
        let (uid, uid_validity) = match version {
            1 => (last.parse().ok()?, 0),
            _ => {
                let mut parts = last.split(':');
                let uid = parts.next()?.parse().ok()?;
                let uid_validity = parts.next()?.parse().ok()?;
                // Version 3's UTF-8 flag, when present, is a number.
                if let Some(flag) = parts.next() {
                    let _: u32 = flag.parse().ok()?;
                }
                if parts.next().is_some() {
                    return None;
                }
                (uid, uid_validity)
            }
        };
        (name, uid, uid_validity)
    };
    let base = name.split(':').next().unwrap_or(name);
    if base.is_empty() || base.contains('/') {
        return None;
    }
    Some(Pop3Entry {
        base: base.into(),
        uidl: uidl(base, uid, uid_validity).into(),
    })
}

/// The UIDL Courier's pop3d gives a message.
pub fn uidl(base: &str, uid: u64, uid_validity: u64) -> String {
    match (uid, uid_validity) {
        (0, _) => escape_name(base),
        (uid, 0) => format!("UID{uid}"),
        (uid, uidv) => format!("UID{uid}-{uidv}"),
    }
}

/// Courier's version 0 UIDL: the base name, with bytes that may not appear
/// in a UIDL (and `'`, `"`, `+`) written as `+XX`.
fn escape_name(base: &str) -> String {
    let mut out = String::with_capacity(base.len());
    for &b in base.as_bytes() {
        if (0x21..=0x7e).contains(&b) && !matches!(b, b'\'' | b'"' | b'+') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("+{b:02X}"));
        }
    }
    out
}

/// True when `uidl` has a form a Courier import can give: `UID` then a
/// digit, or an escaped byte (`+` then two upper-case hex digits). Mail
/// that no imported list knows never gets such a UIDL (see
/// [`super::maildir`]), so it can never collide with an imported one.
pub fn has_imported_form(uidl: &str) -> bool {
    let b = uidl.as_bytes();
    let uid_form = b.len() > 3 && b.starts_with(b"UID") && b[3].is_ascii_digit();
    let escape_form = b.windows(3).any(|w| {
        w[0] == b'+'
            && w[1..]
                .iter()
                .all(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(c))
    });
    uid_form || escape_form
}

/// A parsed `courierimapuiddb`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImapUidDb {
    /// UIDVALIDITY.
    pub uid_validity: u32,
    /// Base file name → IMAP UID.
    pub uids: HashMap<Box<str>, u32>,
}

impl ImapUidDb {
    /// Parses the bytes of the file; `None` for an unknown header. Broken
    /// lines are skipped.
    pub fn parse(bytes: &[u8]) -> Option<ImapUidDb> {
        let mut lines = bytes.split(|&b| b == b'\n');
        let header = std::str::from_utf8(lines.next()?).ok()?;
        let mut fields = header.trim_end_matches('\r').split(' ');
        if fields.next()? != "1" {
            return None;
        }
        let uid_validity = fields.next()?.parse().ok()?;
        let _next_uid: u32 = fields.next()?.parse().ok()?;
        let mut uids = HashMap::new();
        for line in lines {
            let Ok(line) = std::str::from_utf8(line) else {
                continue;
            };
            let line = line.strip_suffix('\r').unwrap_or(line);
            let Some((uid, name)) = line.split_once(' ') else {
                continue;
            };
            let (Ok(uid), Some(base)) = (uid.parse::<u32>(), name.split(':').next()) else {
                continue;
            };
            if uid != 0 && !base.is_empty() {
                uids.insert(base.into(), uid);
            }
        }
        Some(ImapUidDb { uid_validity, uids })
    }
}

/// Joins what Courier left into one [`Uidlist`]: POP3 list entries first
/// (saved UIDL, order = line), then the IMAP UIDs of messages the list does
/// not hold (ordered after them, by UID).
pub fn to_uidlist(pop3: Option<&Pop3List>, imap: Option<&ImapUidDb>) -> Uidlist {
    let listed = pop3.map_or(0, |p| p.entries.len());
    let listed = u32::try_from(listed).unwrap_or(u32::MAX);
    let uid_validity = match (imap, pop3) {
        (Some(db), _) => db.uid_validity,
        (None, Some(p)) => u32::try_from(p.uid_validity).unwrap_or(0),
        (None, None) => 0,
    };
    let mut records = HashMap::new();
    if let Some(db) = imap {
        for (base, &uid) in &db.uids {
            let record = Record {
                uid,
                pop3_uidl: None,
                pop3_order: Some(listed.saturating_add(uid)),
                guid: None,
            };
            records.insert(base.clone(), record);
        }
    }
    if let Some(list) = pop3 {
        for (line, entry) in (1u32..).zip(&list.entries) {
            let uid = imap
                .and_then(|db| db.uids.get(&entry.base).copied())
                .unwrap_or(0);
            // A name listed twice keeps its first line, as Courier matches
            // the first.
            if records
                .get(&entry.base)
                .is_some_and(|r: &Record| r.pop3_uidl.is_some())
            {
                continue;
            }
            let record = Record {
                uid,
                pop3_uidl: Some(entry.uidl.clone()),
                pop3_order: Some(line),
                guid: None,
            };
            records.insert(entry.base.clone(), record);
        }
    }
    Uidlist {
        uid_validity,
        records,
    }
}

/// Reads `dir/name` when it exists and is not absurdly large.
fn read_file(dir: &Path, name: &str) -> io::Result<Option<Vec<u8>>> {
    let path = dir.join(name);
    let meta = match std::fs::metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if meta.len() > FILE_BYTES_MAX {
        tracing::warn!(file = %path.display(), bytes = meta.len(), "too large for a Courier file; ignoring it");
        return Ok(None);
    }
    match std::fs::read(&path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Reads Courier's files in `dir`: `Ok(None)` when there are none (or none
/// that can be used; a broken one is logged).
pub fn read(dir: &Path) -> io::Result<Option<Uidlist>> {
    let pop3 = read_file(dir, POP3_LIST_FILE)?.and_then(|bytes| {
        let list = Pop3List::parse(&bytes);
        if list.is_none() {
            tracing::warn!(dir = %dir.display(), "courierpop3dsizelist has an unknown header; ignoring it");
        }
        list
    });
    let imap = read_file(dir, IMAP_UIDDB_FILE)?.and_then(|bytes| {
        let db = ImapUidDb::parse(&bytes);
        if db.is_none() {
            tracing::warn!(dir = %dir.display(), "courierimapuiddb has an unknown header; ignoring it");
        }
        db
    });
    if pop3.is_none() && imap.is_none() {
        return Ok(None);
    }
    Ok(Some(to_uidlist(pop3.as_ref(), imap.as_ref())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_version_3_as_courier_writes_it() {
        let list = Pop3List::parse(
            b"/3 5 1690000000\n\
              1700000001.12345_1.host:2,S 1203 1:1690000000:0\n\
              1700000002.12345_2.host 88 2:1690000000:1\n\
              1700000003.9_3.my host:2, 10 4:0:0\n",
        )
        .unwrap();
        assert_eq!(list.version, 3);
        assert_eq!(list.uid_validity, 1_690_000_000);
        let got: Vec<(&str, &str)> = list.entries.iter().map(|e| (&*e.base, &*e.uidl)).collect();
        assert_eq!(
            got,
            [
                ("1700000001.12345_1.host", "UID1-1690000000"),
                ("1700000002.12345_2.host", "UID2-1690000000"),
                ("1700000003.9_3.my host", "UID4"),
            ]
        );
    }

    #[test]
    fn reads_older_versions() {
        let v2 = Pop3List::parse(b"/2 3 77\n1.a.h 10 2:77\n").unwrap();
        assert_eq!(&*v2.entries[0].uidl, "UID2-77");
        let v1 = Pop3List::parse(b"/1 3\n1.a.h:2,S 10 2\n").unwrap();
        assert_eq!(&*v1.entries[0].uidl, "UID2");
        // Version 0: no header; the UIDL is the escaped base name.
        let v0 = Pop3List::parse(b"1.a+b'c.h:2,S 10\n2.x\"y.h 20\n").unwrap();
        assert_eq!(v0.version, 0);
        let uidls: Vec<&str> = v0.entries.iter().map(|e| &*e.uidl).collect();
        assert_eq!(uidls, ["1.a+2Bb+27c.h", "2.x+22y.h"]);
        // A UID of 0 in a newer list falls back to the name, as in Courier.
        let zero = Pop3List::parse(b"/3 1 5\n1.\xff 4 0:5:0\n").unwrap();
        assert!(zero.entries.is_empty(), "names must be UTF-8 here");
        let zero = Pop3List::parse(b"/3 1 5\n1.\xc3\xa9 4 0:5:0\n").unwrap();
        assert_eq!(&*zero.entries[0].uidl, "1.+C3+A9");
        let zero = Pop3List::parse(b"/3 1 5\n1.a b 4 0:5:0\n").unwrap();
        assert_eq!(&*zero.entries[0].uidl, "1.a+20b");
    }

    #[test]
    fn broken_headers_and_lines() {
        assert_eq!(Pop3List::parse(b"/4 1 2\n"), None);
        assert_eq!(Pop3List::parse(b"/3 x 2\n"), None);
        assert_eq!(Pop3List::parse(b"/3 1\n"), None);
        assert_eq!(Pop3List::parse(b"/1 1 2\n"), None);
        let list = Pop3List::parse(
            b"/3 9 1\nno-numbers\n1.a 12\n1.b x 1:1:0\n1.c 5 1:x:0\n1.d 5 1:1:0:0\n 5 1:1:0\n1.ok 5 7:1:0\r\n",
        )
        .unwrap();
        let bases: Vec<&str> = list.entries.iter().map(|e| &*e.base).collect();
        assert_eq!(bases, ["1.ok"]);
        assert_eq!(&*list.entries[0].uidl, "UID7-1");
        assert_eq!(Pop3List::parse(b""), Some(Pop3List::default()));
    }

    #[test]
    fn imap_uiddb() {
        let db =
            ImapUidDb::parse(b"1 1650000000 12\n3 1.a.h:2,S\n7 1.b.h\nx 1.c\n0 1.d\n").unwrap();
        assert_eq!(db.uid_validity, 1_650_000_000);
        assert_eq!(db.uids.len(), 2);
        assert_eq!(db.uids["1.a.h"], 3);
        assert_eq!(ImapUidDb::parse(b"2 1 2\n"), None);
        assert_eq!(ImapUidDb::parse(b"1 1\n"), None);
        assert_eq!(ImapUidDb::parse(b""), None);
    }

    #[test]
    fn joined_like_the_dovecot_migration_script() {
        let pop3 = Pop3List::parse(b"/3 3 90\n1.b.h 4 2:90:0\n1.a.h 4 1:90:0\n").unwrap();
        let imap = ImapUidDb::parse(b"1 55 9\n8 1.a.h\n5 1.c.h\n").unwrap();
        let list = to_uidlist(Some(&pop3), Some(&imap));
        assert_eq!(list.uid_validity, 55);
        let a = &list.records["1.a.h"];
        assert_eq!(
            (a.uid, a.pop3_uidl.as_deref(), a.pop3_order),
            (8, Some("UID1-90"), Some(2))
        );
        let b = &list.records["1.b.h"];
        assert_eq!(
            (b.uid, b.pop3_uidl.as_deref(), b.pop3_order),
            (0, Some("UID2-90"), Some(1))
        );
        let c = &list.records["1.c.h"];
        assert_eq!(
            (c.uid, c.pop3_uidl.as_deref(), c.pop3_order),
            (5, None, Some(7))
        );
        // Only a POP3 list: its UIDVALIDITY.
        assert_eq!(to_uidlist(Some(&pop3), None).uid_validity, 90);
    }

    #[test]
    fn imported_forms() {
        for yes in ["UID1", "UID12-34", "1.a+20b", "+2B"] {
            assert!(has_imported_form(yes), "{yes}");
        }
        for no in [
            "UID",
            "UIDx",
            "1700000000.M1P2.host,S=3",
            "a+b",
            "a+2b",
            "00000001000004d2",
        ] {
            assert!(!has_imported_form(no), "{no}");
        }
    }

    #[test]
    fn garbage_never_panics() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for len in 0..400usize {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    b"/0123 :\n\r-x\xff"[(seed % 12) as usize]
                })
                .collect();
            let pop3 = Pop3List::parse(&bytes);
            let imap = ImapUidDb::parse(&bytes);
            let _ = to_uidlist(pop3.as_ref(), imap.as_ref());
        }
    }
}
