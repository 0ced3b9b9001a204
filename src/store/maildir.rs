//! Maildir reading: the snapshot a session sees, fixed at login, kept in a
//! persistent index (see [`super::index`]) so that a login whose Maildir did
//! not change reads one file and three inodes, not the directories.
//!
//! Blocking work (stat, readdir, rename, reading files whose size is not in
//! their name): runs on the worker pool only.
//!
//! - Mail in `new/` is moved to `cur/` with the `:2,` info suffix, as every
//!   Maildir reader (and Dovecot) does, so the next session finds it in `cur/`.
//! - Order: Dovecot's (its UIDs in `dovecot-uidlist`, or a migration's saved
//!   order), then delivery order: the leading timestamp of the base name, then
//!   the whole base name. It is stable across sessions, restarts and rebuilds.
//! - Sizes come from the `,W=` field (Dovecot's virtual size: the size with
//!   CRLF line ends) when present; otherwise the file is read once and the
//!   result is kept in the index (or, when no index can be written, in a
//!   process-wide cache keyed by base name).
//! - UIDLs and order come from `dovecot-uidlist`, or when there is none
//!   from Courier's `courierpop3dsizelist` and `courierimapuiddb` (see
//!   [`super::courier`]): a UIDL an old server gave is kept. Otherwise the
//!   UIDL follows `pop3_uidl_format` (see [`super::uidlist`]). A name that
//!   is not a valid UIDL (over 70 bytes, or bytes outside 0x21..=0x7E) is
//!   replaced by a stable digest of it, and so is a UIDL of mail no list
//!   knows that has a form an imported list gives (`UID7-…`, `+2B`): new
//!   mail never collides with imported UIDLs.
//! - A snapshot is two allocations however many messages it holds: fixed
//!   24-byte entries and one string table of names and UIDLs.
#![forbid(unsafe_code)]

use std::borrow::Cow;
use std::cell::Cell;
use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use super::body::MessageMap;
use super::courier::{self, has_imported_form};
use super::index::{self, Header, INDEX_FILE, Identity, Stale, Stamp, UNKNOWN_BYTES};
use super::location::IndexDir;
use super::root::Root;
use super::uidlist::{Record, UIDLIST_FILE, UidlFormat, Uidlist};
use crate::protocol::Maildrop;

/// [`Message`] flag: the file is in `new/` (it could not be moved to `cur/`).
pub(crate) const FLAG_IN_NEW: u8 = 1;

/// One message of a snapshot. Its file name and UIDL live in the snapshot's
/// string table: ask the [`Snapshot`] for them by index. 24 bytes (pinned
/// below and by a test): with the names this keeps a 20,000-message
/// session under 2 MiB.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Message {
    /// RFC 1939 size: octets with CRLF line ends.
    pub octets: u64,
    /// Size on disk, or [`UNKNOWN_BYTES`].
    pub(crate) file_bytes: u64,
    /// Where the file name starts in the string table.
    pub(crate) name_at: u32,
    /// File name length (Linux names are at most 255 bytes).
    pub(crate) name_len: u8,
    /// Length of the base name (the file name before `:`).
    pub(crate) base_len: u8,
    /// 0: the UIDL is the base name; else its length, right after the name.
    pub(crate) uidl_len: u8,
    /// [`FLAG_IN_NEW`].
    pub(crate) flags: u8,
}

/// What a session pays per message besides its names: a larger entry is a
/// change to look at, not to make in passing.
pub const MESSAGE_BYTES: usize = 24;
const _: () = assert!(std::mem::size_of::<Message>() == MESSAGE_BYTES);

/// The maildrop as it was at login.
#[derive(Debug)]
pub struct Snapshot {
    /// The Maildir directory (holding `cur/`, `new/`, `tmp/`).
    pub dir: PathBuf,
    /// Messages in POP3 order (message n is `messages[n - 1]`).
    pub messages: Vec<Message>,
    /// File names and the UIDLs that are not their base name. Every range
    /// an entry names is in bounds and on character boundaries (checked by
    /// the builder, and by [`index::parse`] for entries read from disk).
    names: Box<str>,
    total_octets: u64,
    /// The owner's RFC 2449 policy, set by [`super::Mailbox::open_for`]
    /// (`None`: the site's applies).
    pub policy: Option<crate::protocol::SitePolicy>,
}

impl Snapshot {
    pub(crate) fn from_parts(
        dir: &Path,
        messages: Vec<Message>,
        names: Box<str>,
        total_octets: u64,
    ) -> Snapshot {
        Snapshot {
            dir: dir.to_path_buf(),
            messages,
            names,
            total_octets,
            policy: None,
        }
    }

    /// True when `other` lists the same messages, in the same order, with
    /// the same names, sizes and UIDLs.
    pub(crate) fn same_messages(&self, other: &Snapshot) -> bool {
        self.total_octets == other.total_octets
            && self.messages.len() == other.messages.len()
            && (0..self.messages.len()).all(|i| {
                let (a, b) = (&self.messages[i], &other.messages[i]);
                a.octets == b.octets
                    && a.file_bytes == b.file_bytes
                    && a.flags == b.flags
                    && self.file_name(i) == other.file_name(i)
                    && self.uidl(i) == other.uidl(i)
            })
    }

    /// The file name of message `index` inside `cur/` (or `new/`).
    pub fn file_name(&self, index: usize) -> &str {
        let m = &self.messages[index];
        let at = m.name_at as usize;
        &self.names[at..at + usize::from(m.name_len)]
    }

    /// The part of the file name before the `:info` suffix.
    pub fn base_name(&self, index: usize) -> &str {
        &self.file_name(index)[..usize::from(self.messages[index].base_len)]
    }

    /// The unique-id listing value of message `index`. Sliced as bytes
    /// (no character-boundary checks): UIDLs are ASCII. This is the per-line
    /// cost of a UIDL listing, so it does one bounds check and no more.
    pub fn uidl(&self, index: usize) -> &[u8] {
        let m = &self.messages[index];
        let (at, len) = match m.uidl_len {
            0 => (m.name_at as usize, m.base_len),
            n => (m.name_at as usize + usize::from(m.name_len), n),
        };
        &self.names.as_bytes()[at..at + usize::from(len)]
    }

    /// The file stayed in `new/` (it could not be moved).
    pub fn in_new(&self, index: usize) -> bool {
        self.messages[index].flags & FLAG_IN_NEW != 0
    }

    /// The size on disk, when known (`,S=` or from reading it).
    pub fn file_bytes(&self, index: usize) -> Option<u64> {
        let b = self.messages[index].file_bytes;
        (b != UNKNOWN_BYTES).then_some(b)
    }

    /// True when the file is known to hold no bare LF (CRLF line ends
    /// throughout), so its bytes can go out as they are.
    pub fn is_crlf(&self, index: usize) -> bool {
        self.file_bytes(index) == Some(self.messages[index].octets)
    }

    /// Where message `index` lives.
    pub fn path(&self, index: usize) -> PathBuf {
        let sub = if self.in_new(index) { "new" } else { "cur" };
        self.dir.join(sub).join(self.file_name(index))
    }

    /// The sum of every message's RFC 1939 size (STAT at login), kept in
    /// the index header.
    pub fn total_octets(&self) -> u64 {
        self.total_octets
    }

    /// Heap bytes this snapshot holds: what a session pays for its mailbox.
    pub fn heap_bytes(&self) -> usize {
        self.messages.capacity() * std::mem::size_of::<Message>()
            + self.names_bytes()
            + self.dir.capacity()
    }

    /// Bytes of the string table (file names, and the UIDLs that are not
    /// their base name).
    pub fn names_bytes(&self) -> usize {
        self.names.len()
    }

    pub(crate) fn table(&self) -> (&[Message], &str) {
        (&self.messages, &self.names)
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
        Snapshot::uidl(self, index)
    }
    fn policy(&self) -> Option<crate::protocol::SitePolicy> {
        self.as_ref().policy
    }
    fn total_octets(&self) -> u64 {
        self.total_octets
    }
    fn seen(&self, index: usize) -> bool {
        // Mail left in new/ (a Maildir the login could not move it out of)
        // is not flagged: flags live in cur/ names.
        self.in_new(index) || has_flag(self.file_name(index), 'S')
    }
}

/// Whether the Maildir name carries `flag` in its `:2,` info.
fn has_flag(file_name: &str, flag: char) -> bool {
    file_name
        .split_once(":2,")
        .is_some_and(|(_, flags)| flags.contains(flag))
}

/// Sizes of one message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Sizes {
    /// RFC 1939 size.
    octets: u64,
    /// Size on disk, or [`UNKNOWN_BYTES`].
    file_bytes: u64,
}

/// Fills a snapshot's two tables.
struct Builder {
    messages: Vec<Message>,
    names: String,
    total_octets: u64,
}

impl Builder {
    fn with_capacity(messages: usize, names_bytes: usize) -> Builder {
        Builder {
            messages: Vec::with_capacity(messages),
            names: String::with_capacity(names_bytes),
            total_octets: 0,
        }
    }

    /// Adds a message; false when it cannot be held (a name over 255 bytes,
    /// which Linux never gives, or a table over 4 GiB).
    fn push(&mut self, file_name: &str, in_new: bool, uidl: &str, sizes: Sizes) -> bool {
        let base = base_name(file_name);
        let own_uidl = if uidl == base { "" } else { uidl };
        let end = self.names.len() + file_name.len() + own_uidl.len();
        let (Ok(_), Ok(name_at), Ok(name_len), Ok(base_len), Ok(uidl_len)) = (
            u32::try_from(end),
            u32::try_from(self.names.len()),
            u8::try_from(file_name.len()),
            u8::try_from(base.len()),
            u8::try_from(own_uidl.len()),
        ) else {
            return false;
        };
        if base.is_empty() || !is_valid_uidl(uidl) {
            return false;
        }
        self.names.push_str(file_name);
        self.names.push_str(own_uidl);
        self.total_octets += sizes.octets;
        self.messages.push(Message {
            octets: sizes.octets,
            file_bytes: sizes.file_bytes,
            name_at,
            name_len,
            base_len,
            uidl_len,
            flags: if in_new { FLAG_IN_NEW } else { 0 },
        });
        true
    }

    fn finish(self, dir: &Path) -> Snapshot {
        Snapshot::from_parts(
            dir,
            self.messages,
            self.names.into_boxed_str(),
            self.total_octets,
        )
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

thread_local! {
    static READDIRS: Cell<u64> = const { Cell::new(0) };
}

/// How many directories this thread has listed: the observable behind "a
/// login whose Maildir did not change reads no directory" (tests; a worker
/// can turn deltas of it into a metric).
pub fn readdir_count() -> u64 {
    READDIRS.with(Cell::get)
}

/// Reads `new/` and `cur/` and builds the snapshot, without an index.
pub fn scan(dir: &Path, format: &UidlFormat) -> io::Result<Snapshot> {
    load(dir, &IndexDir::Memory, format)
}

/// The index file of `dir` (none for [`IndexDir::Memory`]).
pub fn index_path(dir: &Path, place: &IndexDir) -> Option<PathBuf> {
    match place {
        IndexDir::Maildir => Some(dir.join(INDEX_FILE)),
        IndexDir::At(at) => Some(at.join(INDEX_FILE)),
        IndexDir::Memory => None,
    }
}

/// The snapshot of `dir` at login: from its index when `new/`, `cur/` and
/// `dovecot-uidlist` are as the index recorded them, else by reading what
/// changed and updating the index (written back when it can be; a Maildir
/// where it cannot works without one).
pub fn load(dir: &Path, place: &IndexDir, format: &UidlFormat) -> io::Result<Snapshot> {
    // The clock is read before any identity, so every identity was taken
    // at `checked_at` or later.
    load_at(dir, place, format, Stamp::now())
}

/// [`load`] with the wall clock read by the caller, before the call (tests
/// move it to see what a later login does).
pub fn load_at(
    dir: &Path,
    place: &IndexDir,
    format: &UidlFormat,
    checked_at: Stamp,
) -> io::Result<Snapshot> {
    load_in_at(&Root::by_path(dir), place, format, checked_at)
}

/// [`load`] with the names of the Maildir looked up in `root` (a login's
/// open Maildir: see [`super::root`]).
pub fn load_in(root: &Root<'_>, place: &IndexDir, format: &UidlFormat) -> io::Result<Snapshot> {
    load_in_at(root, place, format, Stamp::now())
}

pub(crate) fn load_in_at(
    root: &Root<'_>,
    place: &IndexDir,
    format: &UidlFormat,
    checked_at: Stamp,
) -> io::Result<Snapshot> {
    let dir = root.dir();
    // The index first: when it says the UIDL source files were absent and
    // the Maildir has not changed since, they still are, and the three
    // names need no lookup (on this VM a stat of one name is ~2.5 us of a
    // ~190 us login: `scripts/profile-gap`, docs/benchmarks.md).
    // A Root that must not wait (a login on a shard) serves only an index
    // in the Maildir that needs no rescan and no write; everything else
    // gives `WouldBlock` and is done on the worker pool.
    let would_block = || io::Error::from(io::ErrorKind::WouldBlock);
    let read = match place {
        IndexDir::Maildir => index::read_in(root, INDEX_FILE)?,
        _ if root.is_now() => return Err(would_block()),
        _ => index_path(dir, place).as_deref().and_then(index::read),
    };
    let seal = read.as_ref().map(|p| p.seal);
    let old = read.map(|p| p.into_snapshot(dir));
    let new = root.stat("new")?;
    let cur = root.stat("cur")?;
    // Taken before the UIDL source files are looked for: a file created
    // after this changes it, so it is never recorded as having none.
    // Only where it can be used: an index that found the sources absent,
    // or a first index kept elsewhere (one renamed into the Maildir, or
    // none at all with `:INDEX=MEMORY`, records nothing).
    let root_now = match (&old, place) {
        (Some((header, _)), _) if header.uidlist != Identity::ABSENT => None,
        (Some(_), _) | (None, IndexDir::At(_)) => Some(root.identity()?),
        (None, _) => None,
    };
    let vouched = matches!((&old, &root_now), (Some((header, _)), Some(r)) if header.vouches_absent(r, checked_at, root.times()));
    let uidlist = if vouched {
        Identity::ABSENT
    } else {
        uidl_sources_identity(root, root.stat_optional(UIDLIST_FILE)?)?
    };
    // Worth recording: the sources are absent and the Maildir's times are
    // old enough that a change made at the same tick would show.
    let record =
        root_now.filter(|r| uidlist == Identity::ABSENT && r.settled_at(checked_at, root.times()));
    let now = Header {
        format: format.fingerprint(),
        checked_at,
        new,
        cur,
        uidlist,
        // A new index renamed into the Maildir changes its identity: only
        // an index kept elsewhere records it with the rest.
        root: match place {
            IndexDir::At(_) => record.unwrap_or(Identity::ABSENT),
            _ => Identity::ABSENT,
        },
        root_checked_at: checked_at,
    };
    let stale = match &old {
        Some((header, _)) => header.stale(&now, root.times()),
        None => Stale {
            new: true,
            cur: true,
            uidls: true,
        },
    };
    let old = match old {
        Some((_, snapshot)) if stale.none() => {
            if let (Some(r), Some(seal)) = (record.filter(|_| !vouched), seal) {
                if root.is_now() {
                    return Err(would_block());
                }
                record_root(root, place, &seal, &r, checked_at);
            }
            return Ok(snapshot);
        }
        _ if root.is_now() => return Err(would_block()),
        other => other.map(|(_, snapshot)| snapshot),
    };
    let (snapshot, header, measured) = rescan(dir, old.as_ref(), stale, now, format)?;
    tracing::debug!(dir = %dir.display(), new = stale.new, cur = stale.cur, uidls = stale.uidls, messages = snapshot.messages.len(), "maildir read");
    // Within the dirty window (a delivery, another program's rename, a
    // flag change a moment ago) every login reads the directories again,
    // whatever is written now: an index can only vouch for settled times.
    // When that reading found what the index already holds, a rewrite would
    // change nothing a later login uses, yet it costs a file creation and a
    // rename into the Maildir (which unsettles the Maildir's own times), on
    // every login until the window passes.
    if !header.settled(root.times()) && old.as_ref().is_some_and(|old| old.same_messages(&snapshot))
    {
        return Ok(snapshot);
    }
    // Built here, not at the top: an unchanged Maildir needs no path.
    let persisted = match &index_path(dir, place) {
        Some(path) => match index::write(path, &header, &snapshot) {
            Ok(()) => true,
            Err(e) => {
                index::warn_once(path, "write", &e);
                false
            }
        },
        None => false,
    };
    if !persisted {
        remember_sizes(dir, measured);
    }
    Ok(snapshot)
}

/// [`index::record_root`] on the index of `root`; a failure costs only the
/// lookups it would have saved, so it is logged once and otherwise ignored.
fn record_root(root: &Root<'_>, place: &IndexDir, seal: &index::Seal, r: &Identity, at: Stamp) {
    let opened = match place {
        IndexDir::Maildir => root.open_file_rw(INDEX_FILE),
        IndexDir::At(at_dir) => fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(at_dir.join(INDEX_FILE)),
        IndexDir::Memory => return,
    };
    if let Err(e) = opened.and_then(|file| index::record_root(&file, seal, r, at))
        && let Some(path) = index_path(root.dir(), place)
    {
        index::warn_once(&path, "update", &e);
    }
}

/// Sizes found by reading files, by base name.
type Measured = Vec<(String, Sizes)>;

/// A file this login will show: listed now, or kept from the old index.
enum Found {
    /// From a directory read now: the file name, and whether it is in `new/`.
    Listed(String, bool),
    /// Entry `n` of the old index (its directory did not change).
    Kept(usize),
}

/// One message on its way into the new snapshot.
struct Entry<'a> {
    /// POP3 order: (class, number, base name); see [`order`].
    key: (u8, u64, &'a str),
    name: &'a str,
    in_new: bool,
    uidl: Cow<'a, str>,
    sizes: Sizes,
}

/// Reads what `stale` says changed, reusing the rest from `old`; returns the
/// snapshot, the header to store with it, and the sizes measured by reading
/// files (for the in-memory cache, when no index can be kept).
fn rescan(
    dir: &Path,
    old: Option<&Snapshot>,
    stale: Stale,
    mut now: Header,
    format: &UidlFormat,
) -> io::Result<(Snapshot, Header, Measured)> {
    let mut found = Vec::new();
    let mut moved = false;
    if stale.new {
        for name in list(&dir.join("new"))? {
            let to = format!("{name}:2,");
            match fs::rename(dir.join("new").join(&name), dir.join("cur").join(&to)) {
                Ok(()) => moved = true,
                // Another reader moved it first: cur/ is read below.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), file = %name, error = %e, "cannot move new mail to cur/");
                    found.push(Found::Listed(name, true));
                }
            }
        }
    } else if let Some(old) = old {
        found.extend(
            (0..old.messages.len())
                .filter(|&i| old.in_new(i))
                .map(Found::Kept),
        );
    }
    if stale.cur || moved {
        if moved {
            // Our own renames changed cur/: record it as it is now, before
            // the listing, like any other change.
            now.cur = Identity::stat(&dir.join("cur"))?;
        }
        let (identity, names) = list_settled(&dir.join("cur"), now.cur)?;
        now.cur = identity;
        found.extend(names.into_iter().map(|n| Found::Listed(n, false)));
    } else if let Some(old) = old {
        found.extend(
            (0..old.messages.len())
                .filter(|&i| !old.in_new(i))
                .map(Found::Kept),
        );
    }
    let (entries, measured) = entries(dir, old, &found, stale.uidls, format)?;
    let names_bytes = entries.iter().map(|e| e.name.len() + e.uidl.len()).sum();
    let mut builder = Builder::with_capacity(entries.len(), names_bytes);
    for e in &entries {
        if !builder.push(e.name, e.in_new, &e.uidl, e.sizes) {
            tracing::warn!(dir = %dir.display(), file = %e.name, "skipping a file whose name cannot be indexed");
        }
    }
    Ok((builder.finish(dir), now, measured))
}

/// Lists `sub`, again when it changed while it was listed (a rename seen
/// half-way may show a file under neither name), at most three times.
/// Returns the identity taken before the listing that is returned.
fn list_settled(sub: &Path, mut before: Identity) -> io::Result<(Identity, Vec<String>)> {
    let mut attempts = 0;
    loop {
        let names = list(sub)?;
        let after = Identity::stat(sub)?;
        attempts += 1;
        if after == before || attempts == 3 {
            return Ok((before, names));
        }
        before = after;
    }
}

/// Sizes, UIDLs and order of everything found, sorted into POP3 order with
/// duplicate base names (a file seen under two names mid-rename) dropped.
fn entries<'a>(
    dir: &Path,
    old: Option<&'a Snapshot>,
    found: &'a [Found],
    uidls_stale: bool,
    format: &UidlFormat,
) -> io::Result<(Vec<Entry<'a>>, Measured)> {
    let listed = found.iter().any(|f| matches!(f, Found::Listed(..)));
    // Base name → entry of the old index, to reuse its sizes (and UIDL).
    let by_base: HashMap<&str, usize> = match old {
        Some(old) if listed => (0..old.messages.len())
            .map(|i| (old.base_name(i), i))
            .collect(),
        _ => HashMap::new(),
    };
    let known = |f: &'a Found| -> Option<usize> {
        match f {
            Found::Kept(i) => Some(*i),
            Found::Listed(name, _) => by_base.get(base_name(name)).copied(),
        }
    };
    // Mail the old index never saw may be in the uidlist: read it then, and
    // when the uidlist or the UIDL format changed.
    let fresh = uidls_stale || old.is_none() || found.iter().any(|f| known(f).is_none());
    let uidlist = if fresh { Uidlist::read_any(dir)? } else { None };
    let mut measured = Vec::new();
    let mut scratch = Vec::new();
    let mut out = Vec::with_capacity(found.len());
    for f in found {
        let (name, in_new) = match f {
            Found::Listed(name, in_new) => (name.as_str(), *in_new),
            Found::Kept(i) => {
                let old = old.expect("kept entries come from an old index");
                (old.file_name(*i), old.in_new(*i))
            }
        };
        let base = base_name(name);
        let prior = known(f).zip(old);
        let sizes = match prior {
            Some((i, old)) => Sizes {
                octets: old.messages[i].octets,
                file_bytes: old.messages[i].file_bytes,
            },
            None => match sizes_of(dir, name, in_new, &mut scratch)? {
                Some((sizes, true)) => {
                    measured.push((base.to_string(), sizes));
                    sizes
                }
                Some((sizes, false)) => sizes,
                // Gone since it was listed (removed, or renamed by another
                // reader): the changed directory makes the next login look again.
                None => continue,
            },
        };
        let (key, uidl) = match prior {
            Some((i, old)) if !fresh => {
                let uidl = std::str::from_utf8(old.uidl(i)).unwrap_or(base);
                ((0, i as u64, ""), Cow::Borrowed(uidl))
            }
            _ => {
                let record = uidlist.as_ref().and_then(|l| l.records.get(base));
                let validity = uidlist.as_ref().map(|l| l.uid_validity);
                (order(base, record), uidl(base, record, validity, format))
            }
        };
        out.push(Entry {
            key,
            name,
            in_new,
            uidl,
            sizes,
        });
    }
    out.sort_by(|a, b| a.key.cmp(&b.key));
    out.dedup_by(|a, b| base_name(a.name) == base_name(b.name));
    Ok((out, measured))
}

/// POP3 order, Dovecot's: messages with a migration's saved order (`O`)
/// first, by it; then the rest it has numbered, as if their order were the
/// largest (equal orders go by UID); then mail it has not numbered yet, in
/// delivery order.
fn order<'a>(base: &'a str, record: Option<&Record>) -> (u8, u64, &'a str) {
    match record {
        Some(&Record {
            pop3_order: Some(saved),
            uid,
            ..
        }) => (0, u64::from(saved) << 32 | u64::from(uid), ""),
        Some(r) => (1, u64::from(r.uid), ""),
        None => {
            let (time, base) = order_key(base);
            (2, time, base)
        }
    }
}

/// The UIDL: a migration's saved one, else the template (which may need the
/// message's Dovecot UID), else the base name.
fn uidl<'a>(
    base: &'a str,
    record: Option<&Record>,
    uid_validity: Option<u32>,
    format: &UidlFormat,
) -> Cow<'a, str> {
    match record.and_then(|r| r.pop3_uidl.as_deref()) {
        // A bare `P` is how Dovecot saves a UIDL equal to the base name (its
        // maildir storage writes the empty value to save space and reads it
        // back as the name), so a tree migrated with dsync has one wherever
        // the old server's UIDL was the file name.
        Some("") => return valid_uidl(base),
        Some(saved) => return Cow::Owned(valid_uidl(saved).into_owned()),
        None => {}
    }
    let own = match format.render(base, record, uid_validity) {
        Some(rendered) => Cow::Owned(valid_uidl(&rendered).into_owned()),
        None => valid_uidl(base),
    };
    // Mail no list knows (delivered after the switch) never takes a UIDL of
    // a form an imported list gives, so it cannot collide with one, now or
    // after later imports; the rule depends on the name alone, so the UIDL
    // is stable across sessions.
    if record.is_none() && has_imported_form(&own) {
        return Cow::Owned(digest_uidl(&own));
    }
    own
}

/// The identity of the files UIDLs are made from: `dovecot-uidlist` when it
/// exists (then Courier's files are not read, so they are not looked at);
/// else Courier's two files, folded into one identity that changes when
/// either changes (any write or rename sets a file's ctime to now, and the
/// latest of the times is kept; inode and size are mixed in). Absent when
/// there is none of them, so an index of a plain Maildir is unaffected.
fn uidl_sources_identity(root: &Root<'_>, dovecot: Identity) -> io::Result<Identity> {
    if dovecot != Identity::ABSENT {
        return Ok(dovecot);
    }
    let pop3 = root.stat_optional(courier::POP3_LIST_FILE)?;
    let imap = root.stat_optional(courier::IMAP_UIDDB_FILE)?;
    Ok(match (pop3 == Identity::ABSENT, imap == Identity::ABSENT) {
        (_, true) => pop3,
        (true, false) => Identity {
            // Not the same identity as a sizelist with equal numbers.
            dev: !imap.dev,
            ..imap
        },
        (false, false) => Identity {
            dev: pop3.dev ^ imap.dev.rotate_left(29),
            ino: pop3.ino ^ imap.ino.rotate_left(17) ^ 0x9e37_79b9_7f4a_7c15,
            size: pop3.size ^ imap.size.rotate_left(32),
            mtime: pop3.mtime.max(imap.mtime),
            ctime: pop3.ctime.max(imap.ctime),
        },
    })
}

/// File names in a Maildir subdirectory, without dot files.
fn list(sub: &Path) -> io::Result<Vec<String>> {
    READDIRS.with(|n| n.set(n.get() + 1));
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

/// Sizes of a file the index does not know: from its name, the in-memory
/// cache, or by reading it (then `true`). `None` when it is gone.
fn sizes_of(
    dir: &Path,
    file_name: &str,
    in_new: bool,
    scratch: &mut Vec<u8>,
) -> io::Result<Option<(Sizes, bool)>> {
    let base = base_name(file_name);
    if let Some(octets) = field(base, 'W') {
        let file_bytes = field(base, 'S').unwrap_or(UNKNOWN_BYTES);
        return Ok(Some((Sizes { octets, file_bytes }, false)));
    }
    if let Some(hit) = cached_sizes(dir, base) {
        return Ok(Some((hit, false)));
    }
    let path = dir.join(if in_new { "new" } else { "cur" }).join(file_name);
    match measure(&path, scratch) {
        Ok(sizes) => Ok(Some((sizes, true))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Files up to this size are measured with one read into a reused buffer
/// (cheaper than a map and unmap); larger ones through a guarded map.
const MEASURE_READ_BYTES_MAX: u64 = 1 << 20;

/// Reads a message once for its sizes.
fn measure(path: &Path, scratch: &mut Vec<u8>) -> io::Result<Sizes> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    if len <= MEASURE_READ_BYTES_MAX {
        scratch.clear();
        file.read_to_end(scratch)?;
        return Ok(Sizes {
            file_bytes: scratch.len() as u64,
            octets: crate::wire::scan(scratch).crlf_octets,
        });
    }
    drop(file);
    let map = MessageMap::open(path)?;
    map.read_guarded(|bytes| Sizes {
        file_bytes: bytes.len() as u64,
        octets: crate::wire::scan(bytes).crlf_octets,
    })
    .map_err(|_| {
        io::Error::other(format!(
            "{} was truncated while it was measured",
            path.display()
        ))
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

/// True for a valid RFC 1939 unique-id: 1 to 70 bytes in 0x21..=0x7E.
pub(crate) fn is_valid_uidl(uidl: &str) -> bool {
    !uidl.is_empty() && uidl.len() <= UIDL_BYTES_MAX && all_printable(uidl.as_bytes())
}

/// True when every byte is in 0x21..=0x7E. No early exit, so the loop
/// vectorizes: a login checks every UIDL of the index it reads.
pub(crate) fn all_printable(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .fold(true, |ok, &b| ok & (b.wrapping_sub(0x21) < 0x7f - 0x21))
}

/// `uidl` if it is a valid RFC 1939 unique-id, else a stable digest of it.
fn valid_uidl(uidl: &str) -> Cow<'_, str> {
    if is_valid_uidl(uidl) {
        return Cow::Borrowed(uidl);
    }
    Cow::Owned(digest_uidl(uidl))
}

/// A stable digest of `uidl`: 40 lower-case hex digits.
fn digest_uidl(uidl: &str) -> String {
    // Stable across sessions and restarts: a digest of the name, in hex.
    let digest = ring::digest::digest(&ring::digest::SHA256, uidl.as_bytes());
    let mut hex = String::with_capacity(40);
    for b in &digest.as_ref()[..20] {
        hex.push_str(&format!("{b:02x}"));
    }
    hex
}

/// The fuzz target's entry (`fuzz/fuzz_targets/dovecot_uidlist.rs`): a
/// `dovecot-uidlist` and a Maildir's file names are other programs' bytes.
/// The first byte of `data` picks a `pop3_uidl_format`; the rest up to the
/// first NUL is the uidlist, and what follows it the file names, one per
/// line. Never panics; every UIDL is a valid RFC 1939 unique-id, the same
/// when made again, and the base name's for a bare saved `P`.
#[doc(hidden)]
pub fn fuzz_uidls(data: &[u8]) {
    const FORMATS: [&str; 6] = ["%08Xu%08Xv", "%f", "%v.%u", "UID%u-%v", "%xu%f", "%g"];
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let format = UidlFormat::parse(FORMATS[usize::from(pick) % FORMATS.len()])
        .expect("the fuzz templates are valid");
    let (list, names) = match rest.iter().position(|&b| b == 0) {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        None => (rest, &[][..]),
    };
    let uidlist = std::str::from_utf8(list).ok().and_then(Uidlist::parse);
    let validity = uidlist.as_ref().map(|l| l.uid_validity);
    for name in String::from_utf8_lossy(names).lines() {
        let base = base_name(name);
        let record = uidlist.as_ref().and_then(|l| l.records.get(base));
        let made = uidl(base, record, validity, &format);
        assert!(is_valid_uidl(&made), "{made:?}");
        assert_eq!(made, uidl(base, record, validity, &format));
        if record.and_then(|r| r.pop3_uidl.as_deref()) == Some("") {
            assert_eq!(made, valid_uidl(base));
        }
        let _ = (field(base, 'S'), field(base, 'W'), order(base, record));
    }
}

/// How many measured sizes the process keeps before starting over. At about
/// 100 bytes an entry this bounds the cache near 100 MiB.
const SIZE_CACHE_ENTRIES_MAX: usize = 1 << 20;

/// Keyed by (Maildir, base name): base names are unique within a Maildir,
/// and survive the renames that flag changes make. Filled only for Maildirs
/// whose index cannot be written, so their sizes are read once per process.
static SIZE_CACHE: Mutex<Option<HashMap<SizeKey, Sizes>>> = Mutex::new(None);

/// (Maildir, base name).
type SizeKey = (PathBuf, Box<str>);

fn cached_sizes(dir: &Path, base: &str) -> Option<Sizes> {
    let cache = SIZE_CACHE.lock();
    let cache = cache.as_ref()?;
    if cache.is_empty() {
        return None;
    }
    cache
        .get(&(dir.to_path_buf(), Box::<str>::from(base)))
        .copied()
}

fn remember_sizes(dir: &Path, measured: Measured) {
    if measured.is_empty() {
        return;
    }
    let mut cache = SIZE_CACHE.lock();
    let cache = cache.get_or_insert_with(HashMap::new);
    for (base, sizes) in measured {
        if cache.len() >= SIZE_CACHE_ENTRIES_MAX {
            cache.clear();
        }
        cache.insert((dir.to_path_buf(), base.into()), sizes);
    }
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

    /// Writes `dir`'s `dovecot-uidlist`.
    fn uidlist(dir: &Path, text: &str) {
        fs::write(dir.join(UIDLIST_FILE), text).unwrap();
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
        let names: Vec<&str> = (0..snap.messages.len())
            .map(|i| snap.base_name(i))
            .collect();
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
        let uidls: Vec<&[u8]> = (0..again.messages.len()).map(|i| again.uidl(i)).collect();
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
        let crlf: Vec<bool> = (0..snap.messages.len()).map(|i| snap.is_crlf(i)).collect();
        assert_eq!(crlf, [true, true, false]);
    }

    #[test]
    fn invalid_base_names_get_a_stable_digest_uidl() {
        let long = "1".repeat(71);
        let u = valid_uidl(&long);
        assert_eq!(u.len(), 40);
        assert_eq!(u, valid_uidl(&long));
        assert!(u.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(valid_uidl("1.é.host"), valid_uidl("1.é.host"));
        assert_ne!(valid_uidl("1.é.host"), "1.é.host");
        assert_eq!(valid_uidl("1.M2.h,S=3"), "1.M2.h,S=3");
    }

    #[test]
    fn missing_maildir_is_created_empty() {
        let tmp = tempfile::tempdir().unwrap();
        let snap = open(&tmp.path().join("new-user/Maildir")).unwrap();
        assert!(snap.messages.is_empty());
        assert!(tmp.path().join("new-user/Maildir/tmp").is_dir());
    }

    /// The wall clock `secs` seconds from now: directories made by a test
    /// are then older than the dirty window, as on a real server.
    fn later(secs: i64) -> Stamp {
        let now = Stamp::now();
        Stamp {
            sec: now.sec + secs,
            nsec: now.nsec,
        }
    }

    /// A moment after the latest change to `dir`, `cur/` and `new/`: inside
    /// every dirty window however slowly the test runs.
    fn just_after_changes(dir: &Path) -> Stamp {
        let latest = ["", "cur", "new"]
            .iter()
            .map(|sub| {
                let id = Identity::stat(&dir.join(sub)).unwrap();
                id.mtime.max(id.ctime)
            })
            .max()
            .unwrap();
        let nsec = latest.nsec + 1_000_000;
        Stamp {
            sec: latest.sec + i64::from(nsec / 1_000_000_000),
            nsec: nsec % 1_000_000_000,
        }
    }

    /// Everything a session sees, message by message.
    type Seen = (String, bool, Vec<u8>, u64, Option<u64>);

    fn seen(s: &Snapshot) -> Vec<Seen> {
        (0..s.messages.len())
            .map(|i| {
                (
                    s.file_name(i).to_string(),
                    s.in_new(i),
                    s.uidl(i).to_vec(),
                    s.messages[i].octets,
                    s.file_bytes(i),
                )
            })
            .collect()
    }

    fn maildir() -> (tempfile::TempDir, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("Maildir");
        create(&dir).unwrap();
        (tmp, dir)
    }

    /// What a login on a shard sees through a Root that must not wait.
    fn load_now(dir: &Path, place: &IndexDir, at: Stamp) -> io::Result<Snapshot> {
        load_in_at(&Root::open_now(dir)?, place, &f(), at)
    }

    fn would_block(r: io::Result<Snapshot>) -> bool {
        matches!(r, Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Stamps 3 s apart, each later than the last (directory times made
    /// by the test are past the dirty window at every one).
    fn clock() -> impl FnMut() -> Stamp {
        let mut secs = 0;
        move || {
            secs += 3;
            later(secs)
        }
    }

    /// Logins on the pool until the index is current and records the
    /// Maildir (our own moves and renames change the directories, so that
    /// takes more than one).
    fn settle_by_pool(dir: &Path, place: &IndexDir, tick: &mut impl FnMut() -> Stamp) -> Snapshot {
        for _ in 0..2 {
            load_at(dir, place, &f(), tick()).unwrap();
        }
        load_at(dir, place, &f(), tick()).unwrap()
    }

    #[test]
    fn a_root_that_must_not_wait_serves_only_a_current_index_and_writes_nothing() {
        let (_tmp, dir) = maildir();
        let mut tick = clock();
        write(&dir, "cur", "1700000001.M1.h:2,S", b"a\nb\n");
        write(&dir, "new", "1700000002.M2.h", b"c\n");
        let place = IndexDir::Maildir;
        // No index: nothing is built, nothing moved out of new/.
        assert!(would_block(load_now(&dir, &place, tick())));
        assert!(!dir.join(INDEX_FILE).exists());
        assert!(dir.join("new/1700000002.M2.h").exists());
        // The index just built (not yet recording the Maildir, which
        // needs a write) is the pool's too.
        load_at(&dir, &place, &f(), tick()).unwrap();
        assert!(would_block(load_now(&dir, &place, tick())));
        let built = settle_by_pool(&dir, &place, &mut tick);
        let index = fs::read(dir.join(INDEX_FILE)).unwrap();
        let reads = readdir_count();
        let now = load_now(&dir, &place, tick()).unwrap();
        assert_eq!(seen(&now), seen(&built));
        assert_eq!(now.messages.len(), 2);
        assert_eq!(readdir_count(), reads, "no directory read");
        assert_eq!(
            fs::read(dir.join(INDEX_FILE)).unwrap(),
            index,
            "nothing written"
        );
        // New mail, or a message gone: the pool's work again.
        write(&dir, "new", "1700000003.M3.h", b"d\n");
        assert!(would_block(load_now(&dir, &place, tick())));
        assert_eq!(settle_by_pool(&dir, &place, &mut tick).messages.len(), 3);
        assert_eq!(load_now(&dir, &place, tick()).unwrap().messages.len(), 3);
        fs::remove_file(dir.join("cur/1700000001.M1.h:2,S")).unwrap();
        assert!(would_block(load_now(&dir, &place, tick())));
        // A corrupt index is never used, nor rebuilt here.
        settle_by_pool(&dir, &place, &mut tick);
        assert_eq!(load_now(&dir, &place, tick()).unwrap().messages.len(), 2);
        let mut bytes = fs::read(dir.join(INDEX_FILE)).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x55;
        fs::write(dir.join(INDEX_FILE), &bytes).unwrap();
        assert!(would_block(load_now(&dir, &place, tick())));
        assert_eq!(fs::read(dir.join(INDEX_FILE)).unwrap(), bytes);
        // An index kept elsewhere is the pool's.
        let elsewhere = IndexDir::At(dir.join("../indexes"));
        settle_by_pool(&dir, &elsewhere, &mut tick);
        assert!(would_block(load_now(&dir, &elsewhere, tick())));
    }

    #[test]
    fn a_root_that_must_not_wait_leaves_a_large_index_to_the_pool() {
        let (_tmp, dir) = maildir();
        let mut tick = clock();
        let name = |n: u32| {
            // ~100 bytes of name each: 800 of them pass 64 KiB of index.
            let pad = "x".repeat(70);
            format!("{}.M{n}P{pad}.h:2,S", 1_700_000_000 + n)
        };
        for n in 0..800 {
            write(&dir, "cur", &name(n), b"x\n");
        }
        let place = IndexDir::Maildir;
        settle_by_pool(&dir, &place, &mut tick);
        assert!(fs::metadata(dir.join(INDEX_FILE)).unwrap().len() > 64 << 10);
        assert!(would_block(load_now(&dir, &place, tick())));
        // The same mailbox with fewer messages is served.
        for n in 0..500 {
            fs::remove_file(dir.join("cur").join(name(n))).unwrap();
        }
        settle_by_pool(&dir, &place, &mut tick);
        assert_eq!(load_now(&dir, &place, tick()).unwrap().messages.len(), 300);
    }

    #[test]
    fn an_unchanged_maildir_is_not_read_again() {
        let (_tmp, dir) = maildir();
        write(&dir, "cur", "1700000001.M1P1.h:2,S", b"one\n");
        write(&dir, "new", "1700000002.M2P1.h", b"two\r\n");
        let place = IndexDir::Maildir;
        let first = load_at(&dir, &place, &f(), later(3)).unwrap();
        assert!(dir.join(INDEX_FILE).is_file());
        // The move into cur/ made cur/ recent: read once more, then settled.
        let second = load_at(&dir, &place, &f(), later(6)).unwrap();
        assert_eq!(seen(&first), seen(&second));
        let before = readdir_count();
        let third = load_at(&dir, &place, &f(), later(9)).unwrap();
        assert_eq!(
            readdir_count(),
            before,
            "no readdir for an unchanged Maildir"
        );
        assert_eq!(seen(&third), seen(&first));
        assert_eq!(third.total_octets(), 5 + 5);
        assert_eq!(third.messages.len(), 2);
    }

    /// Lookups of names in `dir` one login at `at` makes (the Maildir is
    /// opened as a login opens it).
    fn lookups(dir: &Path, place: &IndexDir, at: Stamp) -> (u64, Snapshot) {
        let root = Root::open(dir).unwrap();
        let before = super::super::root::stat_count();
        let snapshot = load_in_at(&root, place, &f(), at).unwrap();
        (super::super::root::stat_count() - before, snapshot)
    }

    #[test]
    fn absent_uidl_sources_are_not_looked_up_while_the_maildir_is_unchanged() {
        let (_tmp, dir) = maildir();
        write(&dir, "cur", "1700000001.M1P1.h:2,S", b"one\n");
        let place = IndexDir::Maildir;
        // new/, cur/, dovecot-uidlist and Courier's two.
        assert_eq!(lookups(&dir, &place, later(3)).0, 5, "no index yet");
        // The index renamed into the Maildir changed it: looked up again,
        // and the Maildir's identity recorded in place.
        assert_eq!(lookups(&dir, &place, later(6)).0, 5);
        let readdirs = readdir_count();
        let (n, snapshot) = lookups(&dir, &place, later(9));
        assert_eq!(n, 2, "only new/ and cur/");
        assert_eq!(readdir_count(), readdirs, "and no directory read");
        assert_eq!(seen(&snapshot), seen(&scan(&dir, &f()).unwrap()));
        assert!(
            index::read(&dir.join(INDEX_FILE)).is_some(),
            "the update kept it valid"
        );
        // A dovecot-uidlist appearing changes the Maildir: it is seen.
        uidlist(&dir, "3 V5 N2 G0\n1 Pkept :1700000001.M1P1.h\n");
        let (n, snapshot) = lookups(&dir, &place, later(12));
        assert_eq!(
            n, 3,
            "new/, cur/ and the uidlist (Courier's are not needed)"
        );
        assert_eq!(snapshot.uidl(0), b"kept");
    }

    #[test]
    fn a_courier_file_made_after_the_record_is_seen() {
        let (_tmp, dir) = maildir();
        write(&dir, "cur", "1700000001.11_1.host:2,", b"one\n");
        let place = IndexDir::Maildir;
        let format = UidlFormat::default();
        load_at(&dir, &place, &format, later(3)).unwrap();
        load_at(&dir, &place, &format, later(6)).unwrap();
        assert_eq!(lookups(&dir, &place, later(9)).0, 2, "recorded");
        fs::write(
            dir.join(courier::POP3_LIST_FILE),
            "/3 3 1690000000\n1700000001.11_1.host:2, 4 7:1690000000:0\n",
        )
        .unwrap();
        let snapshot = load_at(&dir, &place, &format, later(12)).unwrap();
        assert_eq!(snapshot.uidl(0), b"UID7-1690000000");
    }

    #[test]
    fn a_maildir_changed_within_the_dirty_window_is_not_recorded() {
        let (_tmp, dir) = maildir();
        write(&dir, "cur", "1.a:2,", b"x\n");
        let place = IndexDir::Maildir;
        load_at(&dir, &place, &f(), Stamp::now()).unwrap();
        // Checked at once, the Maildir's times are too recent to vouch for
        // anything: every login looks the sources up.
        for _ in 0..3 {
            let (n, _) = lookups(&dir, &place, just_after_changes(&dir));
            assert_eq!(n, 5);
        }
        // Later: cur/ is read again (it was recent too) and the index
        // rewritten, which changes the Maildir; the next login records it.
        assert_eq!(lookups(&dir, &place, later(5)).0, 5);
        assert_eq!(lookups(&dir, &place, later(6)).0, 5, "recorded now");
        assert_eq!(lookups(&dir, &place, later(7)).0, 2);
        // A clock stepped back distrusts the record.
        assert_eq!(lookups(&dir, &place, later(4)).0, 5);
    }

    #[test]
    fn the_maildir_itself_is_not_looked_at_where_nothing_can_be_recorded() {
        let (_tmp, dir) = maildir();
        write(&dir, "cur", "1.a:2,", b"x\n");
        let fstats = |place: &IndexDir, at: Stamp| {
            let before = super::super::root::identity_count();
            lookups(&dir, place, at);
            super::super::root::identity_count() - before
        };
        // No index kept: every login is a first one.
        assert_eq!(fstats(&IndexDir::Memory, later(3)), 0);
        assert_eq!(fstats(&IndexDir::Memory, later(6)), 0);
        // The first index in the Maildir: its rename would change it anyway.
        assert_eq!(fstats(&IndexDir::Maildir, later(9)), 0);
        assert_eq!(fstats(&IndexDir::Maildir, later(12)), 1);
    }

    #[test]
    fn an_index_kept_elsewhere_records_the_maildir_when_written() {
        let (tmp, dir) = maildir();
        write(&dir, "cur", "1.a:2,", b"x\n");
        let place = IndexDir::At(tmp.path().join("indexes"));
        assert_eq!(lookups(&dir, &place, later(3)).0, 5);
        assert_eq!(
            lookups(&dir, &place, later(6)).0,
            2,
            "recorded with the index"
        );
    }

    #[test]
    fn within_the_dirty_window_the_index_is_rewritten_only_for_a_change() {
        use std::os::unix::fs::MetadataExt;
        let (_tmp, dir) = maildir();
        write(&dir, "cur", "1.a:2,", b"x\n");
        let place = IndexDir::Maildir;
        let index = dir.join(INDEX_FILE);
        let inode = || fs::metadata(&index).unwrap().ino();
        let names = |s: &Snapshot| seen(s).into_iter().map(|m| m.0).collect::<Vec<_>>();
        // Checked at once: cur/ is dirty. The first index is written.
        load_at(&dir, &place, &f(), just_after_changes(&dir)).unwrap();
        let first = inode();
        // Still dirty, nothing new: the directory is read, the file left.
        let before = readdir_count();
        let s = load_at(&dir, &place, &f(), just_after_changes(&dir)).unwrap();
        assert!(readdir_count() > before, "a dirty directory is read again");
        assert_eq!(names(&s), ["1.a:2,"]);
        assert_eq!(inode(), first, "no rewrite for the same messages");
        // A delivery within the window is seen and written at once.
        write(&dir, "new", "2.b", b"yy\n");
        let s = load_at(&dir, &place, &f(), just_after_changes(&dir)).unwrap();
        assert_eq!(names(&s), ["1.a:2,", "2.b:2,"]);
        let second = inode();
        assert_ne!(second, first, "a change is written");
        // So is a removal by another program.
        fs::remove_file(dir.join("cur/1.a:2,")).unwrap();
        let s = load_at(&dir, &place, &f(), just_after_changes(&dir)).unwrap();
        assert_eq!(names(&s), ["2.b:2,"]);
        assert_eq!(s.messages[0].octets, 4);
        assert_ne!(inode(), second);
        // Once the window has passed, one login writes an index that vouches
        // for the directories, and the next reads none.
        let s = load_at(&dir, &place, &f(), later(5)).unwrap();
        assert_eq!(names(&s), ["2.b:2,"]);
        let before = readdir_count();
        let s = load_at(&dir, &place, &f(), later(6)).unwrap();
        assert_eq!(readdir_count(), before);
        assert_eq!(names(&s), ["2.b:2,"]);
    }

    #[test]
    fn recent_directories_are_read_until_they_settle() {
        let (_tmp, dir) = maildir();
        write(&dir, "cur", "1.a:2,", b"x\n");
        let place = IndexDir::Maildir;
        // Checked right now: cur/ changed within the dirty window.
        load_at(&dir, &place, &f(), Stamp::now()).unwrap();
        let before = readdir_count();
        load_at(&dir, &place, &f(), later(5)).unwrap();
        assert!(readdir_count() > before, "a dirty directory is read again");
        let before = readdir_count();
        load_at(&dir, &place, &f(), later(6)).unwrap();
        assert_eq!(readdir_count(), before);
    }

    #[test]
    fn a_clock_stepped_back_makes_the_index_untrusted() {
        let (_tmp, dir) = maildir();
        write(&dir, "cur", "1.a:2,", b"x\n");
        load_at(&dir, &IndexDir::Maildir, &f(), later(60)).unwrap();
        let before = readdir_count();
        load_at(&dir, &IndexDir::Maildir, &f(), later(30)).unwrap();
        assert!(readdir_count() > before);
    }

    #[test]
    fn deliveries_and_removals_are_seen_and_sizes_are_not_measured_twice() {
        let (_tmp, dir) = maildir();
        write(&dir, "cur", "1700000001.M1.h:2,", b"a\nb\n");
        write(&dir, "cur", "1700000002.M2.h:2,", b"gone soon\n");
        let place = IndexDir::Maildir;
        let first = load_at(&dir, &place, &f(), later(3)).unwrap();
        assert_eq!(first.messages.len(), 2);
        assert_eq!(first.messages[0].octets, 6);
        // Maildir files never change; if this one did, a reread would show it.
        fs::write(dir.join("cur/1700000001.M1.h:2,"), b"longer now\n").unwrap();
        fs::remove_file(dir.join("cur/1700000002.M2.h:2,")).unwrap();
        write(&dir, "new", "1700000003.M3.h", b"new\n");
        let second = load_at(&dir, &place, &f(), later(6)).unwrap();
        let names: Vec<&str> = (0..2).map(|i| second.base_name(i)).collect();
        assert_eq!(names, ["1700000001.M1.h", "1700000003.M3.h"]);
        assert_eq!(second.messages.len(), 2);
        assert_eq!(second.messages[0].octets, 6, "size kept from the index");
        assert_eq!(second.messages[1].octets, 5);
        assert_eq!(second.total_octets(), 11);
        // A flag change by another reader renames the file: same base name,
        // same UIDL and size, new path.
        fs::rename(
            dir.join("cur/1700000003.M3.h:2,"),
            dir.join("cur/1700000003.M3.h:2,S"),
        )
        .unwrap();
        let third = load_at(&dir, &place, &f(), later(9)).unwrap();
        assert_eq!(third.file_name(1), "1700000003.M3.h:2,S");
        assert_eq!(third.uidl(1), b"1700000003.M3.h");
        assert_eq!(fs::read(third.path(1)).unwrap(), b"new\n");
    }

    #[test]
    fn broken_index_files_are_rebuilt() {
        let (_tmp, dir) = maildir();
        write(&dir, "cur", "1700000001.M1.h,S=2,W=3:2,", b"a\n");
        write(&dir, "cur", "1700000002.M2.h:2,", b"bb\n");
        let place = IndexDir::Maildir;
        let good = seen(&load_at(&dir, &place, &f(), later(3)).unwrap());
        let path = dir.join(INDEX_FILE);
        let bytes = fs::read(&path).unwrap();
        let mut flipped = bytes.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x20;
        let mut version = bytes.clone();
        version[8] = 99;
        for broken in [
            bytes[..bytes.len() / 2].to_vec(),
            bytes[..10].to_vec(),
            Vec::new(),
            flipped,
            version,
            b"garbage that is no index at all".to_vec(),
        ] {
            fs::write(&path, &broken).unwrap();
            let before = readdir_count();
            let again = load_at(&dir, &place, &f(), later(6)).unwrap();
            assert!(readdir_count() > before, "a broken index is not trusted");
            assert_eq!(seen(&again), good);
            assert!(index::parse(&fs::read(&path).unwrap()).is_ok(), "rewritten");
        }
        // Deleting it is safe too.
        fs::remove_file(&path).unwrap();
        assert_eq!(seen(&load_at(&dir, &place, &f(), later(6)).unwrap()), good);
    }

    #[test]
    fn the_index_lives_where_the_location_says() {
        let (tmp, dir) = maildir();
        write(&dir, "cur", "1.a:2,", b"x\n");
        let elsewhere = tmp.path().join("idx/user");
        let place = IndexDir::At(elsewhere.clone());
        load_at(&dir, &place, &f(), later(3)).unwrap();
        assert!(elsewhere.join(INDEX_FILE).is_file(), "created with its dir");
        assert!(!dir.join(INDEX_FILE).exists());
        let before = readdir_count();
        load_at(&dir, &place, &f(), later(6)).unwrap();
        assert_eq!(readdir_count(), before);
        // MEMORY: no file anywhere, every login reads.
        let (_tmp2, other) = maildir();
        load_at(&other, &IndexDir::Memory, &f(), later(3)).unwrap();
        assert!(!other.join(INDEX_FILE).exists());
        let before = readdir_count();
        load_at(&other, &IndexDir::Memory, &f(), later(6)).unwrap();
        assert!(readdir_count() > before);
    }

    #[test]
    fn an_unwritable_index_place_still_serves_the_mailbox() {
        let (tmp, dir) = maildir();
        write(&dir, "cur", "1.a:2,", b"x\n");
        let file = tmp.path().join("a-file");
        fs::write(&file, b"").unwrap();
        // A directory below a regular file can never be made, even by root.
        let place = IndexDir::At(file.join("idx"));
        for _ in 0..2 {
            let s = load_at(&dir, &place, &f(), later(3)).unwrap();
            assert_eq!(s.messages.len(), 1);
            assert_eq!(s.messages[0].octets, 3);
        }
    }

    #[test]
    fn uidls_and_order_follow_dovecot_uidlist_through_index_updates() {
        let (_tmp, dir) = maildir();
        write(&dir, "cur", "1700000005.M5.h:2,", b"x\n");
        write(&dir, "cur", "1700000006.M6.h:2,S", b"y\n");
        write(&dir, "cur", "1700000001.M1.h:2,", b"z\n");
        // Dovecot numbered 6 before 5; 1 is not in its list yet.
        uidlist(
            &dir,
            "3 V1655390361 N3 G0\n1 :1700000006.M6.h\n2 :1700000005.M5.h\n",
        );
        let format = UidlFormat::default();
        let place = IndexDir::Maildir;
        let expect = |s: &Snapshot, want: &[&str]| {
            let uidls: Vec<String> = (0..s.messages.len())
                .map(|i| String::from_utf8(s.uidl(i).to_vec()).unwrap())
                .collect();
            assert_eq!(uidls, want);
            assert_eq!(
                seen(s),
                seen(&scan(&dir, &format).unwrap()),
                "index == scan"
            );
        };
        let s = load_at(&dir, &place, &format, later(3)).unwrap();
        expect(
            &s,
            &["0000000162ab4099", "0000000262ab4099", "1700000001.M1.h"],
        );
        // Dovecot adds message 1 (in place, as it appends): its UIDL changes
        // exactly as it does without an index.
        uidlist(
            &dir,
            "3 V1655390361 N4 G0\n1 :1700000006.M6.h\n2 :1700000005.M5.h\n3 :1700000001.M1.h\n",
        );
        let s = load_at(&dir, &place, &format, later(6)).unwrap();
        expect(
            &s,
            &["0000000162ab4099", "0000000262ab4099", "0000000362ab4099"],
        );
        // Another template: the index is rebuilt with it.
        let by_name = f();
        let s = load_at(&dir, &place, &by_name, later(9)).unwrap();
        assert_eq!(s.uidl(0), b"1700000006.M6.h");
    }

    #[test]
    fn a_bare_saved_uidl_is_the_base_name_as_dovecot_reads_it() {
        let (_tmp, dir) = maildir();
        write(&dir, "cur", "1700000001.M1.h,S=2:2,S", b"a\n");
        write(&dir, "cur", "1700000002.M2.h:2,", b"b\n");
        write(&dir, "cur", "1700000003.M3.h:2,", b"c\n");
        // What Dovecot's dsync leaves when the old server's UIDLs were the
        // file names (a bare `P`), beside a saved UIDL of another form.
        uidlist(
            &dir,
            "3 V1655390361 N4 G0\n1 P :1700000001.M1.h,S=2\n2 P :1700000002.M2.h\n\
             3 Pold-3 :1700000003.M3.h\n",
        );
        let s = scan(&dir, &UidlFormat::default()).unwrap();
        let uidls: Vec<&[u8]> = (0..3).map(|i| s.uidl(i)).collect();
        assert_eq!(
            uidls,
            [
                &b"1700000001.M1.h,S=2"[..],
                &b"1700000002.M2.h"[..],
                &b"old-3"[..]
            ]
        );
    }

    #[test]
    fn saved_orders_come_first_then_the_other_numbered_then_the_new() {
        let (_tmp, dir) = maildir();
        for n in 1..=6 {
            write(&dir, "cur", &format!("170000000{n}.M{n}.h:2,"), b"x\n");
        }
        // As Dovecot sorts: by `O`, a record without one as if its `O` were
        // the largest, equal orders by UID; unnumbered mail after all.
        uidlist(
            &dir,
            "3 V1 N6 G0\n1 O5 :1700000001.M1.h\n2 :1700000002.M2.h\n\
             3 O1 :1700000003.M3.h\n4 O5 :1700000004.M4.h\n5 :1700000005.M5.h\n",
        );
        let s = scan(&dir, &UidlFormat::default()).unwrap();
        let order: Vec<&str> = (0..6).map(|i| &s.base_name(i)[9..10]).collect();
        assert_eq!(order, ["3", "1", "4", "2", "5", "6"]);
    }

    #[test]
    fn the_fuzz_seeds_of_the_uidl_rules_hold() {
        for seed in ["dsync", "imported"] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/seed_uidlist");
            fuzz_uidls(&fs::read(path.join(seed)).unwrap());
        }
    }

    #[test]
    fn a_courier_tree_keeps_courier_uidls_and_new_mail_cannot_collide() {
        let (_tmp, dir) = maildir();
        write(&dir, "cur", "1700000002.22_1.host:2,S", b"two\n");
        write(&dir, "cur", "1700000001.11_1.host:2,", b"one\n");
        write(&dir, "cur", "1700000003.33_1.host:2,", b"imap only\n");
        // Delivered after the switch; one name has an imported form.
        write(&dir, "new", "1700000009.99_1.host", b"new\n");
        write(&dir, "new", "UID7-1690000000", b"odd\n");
        fs::write(
            dir.join(courier::POP3_LIST_FILE),
            "/3 3 1690000000\n1700000001.11_1.host:2, 5 1:1690000000:0\n\
             1700000002.22_1.host:2,S 5 2:1690000000:0\n",
        )
        .unwrap();
        fs::write(
            dir.join(courier::IMAP_UIDDB_FILE),
            "1 1650000000 40\n31 1700000001.11_1.host\n33 1700000003.33_1.host\n",
        )
        .unwrap();
        let format = UidlFormat::default();
        let place = IndexDir::Maildir;
        let uidls = |s: &Snapshot| -> Vec<String> {
            (0..s.messages.len())
                .map(|i| String::from_utf8(s.uidl(i).to_vec()).unwrap())
                .collect()
        };
        let s = load_at(&dir, &place, &format, later(3)).unwrap();
        let got = uidls(&s);
        assert_eq!(
            &got[..4],
            [
                "UID1-1690000000",
                "UID2-1690000000",
                // IMAP UID 33 (0x21), UIDVALIDITY 1650000000 (0x62590080).
                "0000002162590080",
                "1700000009.99_1.host",
            ]
        );
        assert_eq!(got[4], digest_uidl("UID7-1690000000"));
        assert_eq!(
            seen(&s),
            seen(&scan(&dir, &format).unwrap()),
            "index == scan"
        );
        // Stable across logins (from the index) ...
        let again = load_at(&dir, &place, &format, later(6)).unwrap();
        assert_eq!(uidls(&again), got);
        // ... and a changed list is seen through the index.
        fs::write(
            dir.join(courier::POP3_LIST_FILE),
            "/3 3 1690000000\n1700000001.11_1.host:2, 5 1:1690000000:0\n",
        )
        .unwrap();
        let changed = load_at(&dir, &place, &format, later(9)).unwrap();
        assert_eq!(uidls(&changed)[0], "UID1-1690000000");
        assert_ne!(uidls(&changed)[1], "UID2-1690000000");
        assert_eq!(seen(&changed), seen(&scan(&dir, &format).unwrap()));
        // A dovecot-uidlist, once written, is the source and wins.
        uidlist(&dir, "3 V5 N2 G0\n1 Pkept :1700000001.11_1.host\n");
        let dovecot = load_at(&dir, &place, &format, later(12)).unwrap();
        assert_eq!(dovecot.uidl(0), b"kept");
        assert_eq!(seen(&dovecot), seen(&scan(&dir, &format).unwrap()));
    }

    #[test]
    fn the_index_agrees_with_a_full_scan_through_random_changes() {
        let (_tmp, dir) = maildir();
        let place = IndexDir::Maildir;
        let format = UidlFormat::default();
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let mut clock = 3;
        for step in 0..60u32 {
            let name = format!("{}.M{step}.h", 1_700_000_000 + next(50));
            match next(6) {
                0 => write(&dir, "new", &name, b"new\nmail\n"),
                1 => write(&dir, "cur", &format!("{name},S=3,W=4:2,"), b"ab\n"),
                2 => write(&dir, "cur", &format!("{name}:2,"), b"cur\r\n"),
                3 | 4 => {
                    let cur: Vec<_> = fs::read_dir(dir.join("cur")).unwrap().collect();
                    if !cur.is_empty() {
                        let victim = cur[next(cur.len() as u64) as usize]
                            .as_ref()
                            .unwrap()
                            .path();
                        if next(2) == 0 {
                            fs::remove_file(victim).unwrap();
                        } else {
                            let flagged = format!("{}F", victim.display());
                            fs::rename(&victim, flagged).unwrap();
                        }
                    }
                }
                _ => {
                    let mut text = String::from("3 V7 N1 G0\n");
                    for (uid, e) in fs::read_dir(dir.join("cur")).unwrap().enumerate() {
                        let n = e.unwrap().file_name().into_string().unwrap();
                        if next(2) == 0 {
                            text.push_str(&format!("{} :{}\n", uid + 1, base_name(&n)));
                        }
                    }
                    uidlist(&dir, &text);
                }
            }
            clock += 3;
            let indexed = load_at(&dir, &place, &format, later(clock)).unwrap();
            let full = load_at(&dir, &IndexDir::Memory, &format, later(clock)).unwrap();
            assert_eq!(seen(&indexed), seen(&full), "step {step}");
            assert_eq!(indexed.total_octets(), full.total_octets());
        }
    }

    #[test]
    fn a_20000_message_snapshot_fits_in_2_mib() {
        let (_tmp, dir) = maildir();
        let mut name_bytes = 0;
        for n in 0..20_000u32 {
            // Dovecot's own naming, with the sizes in the name.
            let name = format!(
                "{}.M{n:06}P{:05}.mail.example.net,S=2048,W=2100:2,S",
                1_700_000_000 + n,
                n % 99_999
            );
            name_bytes += name.len();
            File::create(dir.join("cur").join(name)).unwrap();
        }
        let format = UidlFormat::default();
        let s = load_at(&dir, &IndexDir::Maildir, &format, later(3)).unwrap();
        assert_eq!(s.messages.len(), 20_000);
        assert_eq!(s.total_octets(), 20_000 * 2100);
        let again = load_at(&dir, &IndexDir::Maildir, &format, later(6)).unwrap();
        assert_eq!(again.uidl(19_999), s.uidl(19_999));
        // Scanned or read from the index, the footprint is pinned: one
        // 24-byte entry per message, no slack, and one arena holding each
        // file name once (the UIDL is the base name, so it adds nothing).
        for snap in [&s, &again] {
            assert_eq!(std::mem::size_of::<Message>(), MESSAGE_BYTES);
            assert_eq!(snap.messages.capacity(), 20_000);
            assert_eq!(snap.names_bytes(), name_bytes);
            let heap = snap.heap_bytes();
            assert_eq!(
                heap,
                20_000 * MESSAGE_BYTES + name_bytes + snap.dir.capacity()
            );
            assert!(heap <= 2 << 20, "{heap} bytes");
        }
    }
}
