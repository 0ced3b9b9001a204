//! The persistent mailbox index: one file per Maildir holding, in POP3 order,
//! what a session needs (file name, RFC 1939 size, size on disk, UIDL), and
//! the identity of `cur/`, `new/` and the UIDL source files (`dovecot-uidlist`,
//! or Courier's) it was built from.
//! A login whose directories still have that identity reads this file and no
//! directory at all (see [`super::maildir::load`]).
//!
//! The index is a cache: it may be stale or absent, never trusted when wrong.
//! - Written whole to a temporary name in the same directory, then renamed
//!   over the old one: readers see the old file or the new one, never a mix.
//!   No fsync: a file torn by a power loss fails its checksum and is rebuilt.
//! - Versioned and checksummed (CRC-32 over everything after the checksum).
//!   A truncated, torn, foreign or corrupt file is reported by [`parse`],
//!   logged once, and rebuilt from the directories. Deleting it is always safe.
//! - Directory times are trusted only once they are older than the check
//!   that recorded them by a dirty window (Dovecot's maildir sync calls such
//!   directories dirty): a change made within the file system's timestamp
//!   granularity of the check could leave the time unchanged. The window is
//!   [`DIRTY_WINDOW`], or [`LOCAL_DIRTY_WINDOW`] where this kernel's clock
//!   stamped the times in nanoseconds ([`Times::Local`]).
//!
//! File layout, little-endian (`HEADER_BYTES` then `count` entries then the
//! names):
//!
//! ```text
//!   0  magic "SPOPIDX\0"          8  version u32        12  crc32 of [16..]
//!  16  file length u64            24  UIDL format fingerprint u32
//!  28  message count u32          32  total RFC 1939 octets u64
//!  40  names length u32           44  reserved (0) u32
//!  48  checked at: sec i64, nsec u32, reserved u32
//!  64  identity of new/   112  of cur/   160  of the UIDL source files
//!      (dovecot-uidlist, or Courier's two folded into one; all zero: absent)
//!      each: dev u64, ino u64, size u64, mtime sec i64, ctime sec i64,
//!            mtime nsec u32, ctime nsec u32
//! 208  identity of the Maildir itself when the UIDL source files were last
//!      found absent (all zero: not recorded)
//! 256  when it was taken: sec i64, nsec u32, reserved u32
//! 272  entries, 24 bytes each: octets u64, bytes on disk u64 (all ones:
//!      unknown), name offset u32, name length u8, base name length u8,
//!      UIDL length u8 (0: the UIDL is the base name; else it follows the
//!      name), flags u8 (bit 0: the file is in new/)
//!      then the names (UTF-8)
//! ```
#![forbid(unsafe_code)]

use std::collections::HashSet;
use std::fmt;
use std::fs;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

use super::maildir::{FLAG_IN_NEW, Message, Snapshot};

/// The index file's name: a dot file, which no Maildir reader takes for mail.
pub const INDEX_FILE: &str = ".shardpop-pop3.index";

/// The format this build reads and writes. Any other is rebuilt (an older
/// one quietly: an upgrade is not a fault).
pub const VERSION: u32 = 2;

/// Directory and file times closer than this to the check that recorded
/// them (or later than it) are not trusted: the next login reads again.
/// Two seconds cover file systems with one-second times (NFS, ext3) and
/// coarse kernel clocks, as Dovecot's maildir sync does.
pub const DIRTY_WINDOW: Duration = Duration::from_secs(2);

/// The dirty window of times this kernel stamped in nanoseconds: a local
/// file system's times come from the same clock as the check, at most one
/// timer tick (10 ms at HZ=100) behind it, with no other host's clock skew
/// in them. Ten ticks of margin. After a delivery, logins read the
/// directory again for this long, not for [`DIRTY_WINDOW`].
pub const LOCAL_DIRTY_WINDOW: Duration = Duration::from_millis(100);

/// Who stamped a Maildir's times, which sets how long they stay dirty.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Times {
    /// This kernel, on a local file system (`statfs` magic: see
    /// [`super::root`]): [`LOCAL_DIRTY_WINDOW`] for times kept in
    /// nanoseconds.
    Local,
    /// Anything else, or not known (NFS and cluster file systems, whose
    /// server clock may differ from ours, FUSE): [`DIRTY_WINDOW`].
    Other,
}

const MAGIC: [u8; 8] = *b"SPOPIDX\0";
const HEADER_BYTES: usize = 272;
/// Bodies longer than this have their checksum combined with the header's
/// rather than hashed twice (see [`parse`]).
const COMBINE_ABOVE: usize = 64 * 1024;
/// Where the Maildir's identity and its check time start: the part of the
/// header [`record_root`] rewrites in place.
const ROOT_AT: usize = 208;
const ENTRY_BYTES: usize = 24;
const IDENTITY_BYTES: usize = 48;
/// RFC 1939's longest unique-id.
const UIDL_BYTES_MAX: usize = 70;
/// The bytes-on-disk value of an entry whose size on disk is unknown.
pub(crate) const UNKNOWN_BYTES: u64 = u64::MAX;

/// A wall-clock time as the file system stores it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Stamp {
    /// Seconds since the epoch (negative before it).
    pub sec: i64,
    /// Nanoseconds, 0..1e9.
    pub nsec: u32,
}

impl Stamp {
    /// The wall clock now.
    pub fn now() -> Stamp {
        match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(d) => Stamp {
                sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                nsec: d.subsec_nanos(),
            },
            // A clock before 1970 is a broken clock: every time looks recent,
            // so nothing is trusted.
            Err(_) => Stamp::default(),
        }
    }

    fn nanos(self) -> i128 {
        i128::from(self.sec) * 1_000_000_000 + i128::from(self.nsec)
    }
}

/// What identifies one state of a directory or file: if any of this changed,
/// so may have its content.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Identity {
    /// Device.
    pub dev: u64,
    /// Inode (never 0 for a file that exists).
    pub ino: u64,
    /// Size in bytes.
    pub size: u64,
    /// Last content change.
    pub mtime: Stamp,
    /// Last inode change (renames into and out of a directory set it too,
    /// and `utime` cannot set it back).
    pub ctime: Stamp,
}

impl Identity {
    /// A file that does not exist.
    pub const ABSENT: Identity = Identity {
        dev: 0,
        ino: 0,
        size: 0,
        mtime: Stamp { sec: 0, nsec: 0 },
        ctime: Stamp { sec: 0, nsec: 0 },
    };

    /// The identity of `path` (which must exist).
    pub fn stat(path: &Path) -> io::Result<Identity> {
        let st = nix::sys::stat::stat(path).map_err(|e| io::Error::from_raw_os_error(e as i32))?;
        Ok(Identity::of(&st))
    }

    /// The identity `stat(2)` (or `fstatat(2)`) returned.
    pub fn of(st: &nix::sys::stat::FileStat) -> Identity {
        let stamp = |sec: i64, nsec: i64| Stamp {
            sec,
            nsec: u32::try_from(nsec).unwrap_or(0),
        };
        Identity {
            dev: st.st_dev,
            ino: st.st_ino,
            size: u64::try_from(st.st_size).unwrap_or(0),
            mtime: stamp(st.st_mtime, st.st_mtime_nsec),
            ctime: stamp(st.st_ctime, st.st_ctime_nsec),
        }
    }

    /// The identity of `path`, or [`Identity::ABSENT`] when there is none.
    pub fn stat_optional(path: &Path) -> io::Result<Identity> {
        match Identity::stat(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Identity::ABSENT),
            other => other,
        }
    }

    /// True when nothing can have changed unseen since a check at
    /// `checked_at` found this identity: its times are older than the check
    /// by at least the dirty window of `times`.
    pub fn settled_at(&self, checked_at: Stamp, times: Times) -> bool {
        if *self == Identity::ABSENT {
            return true;
        }
        // The ctime is always the kernel's own (a program may set the mtime
        // to a whole second): a file system that keeps seconds only, such
        // as ext4 with 128-byte inodes, shows no nanoseconds there.
        let window = match times {
            Times::Local if self.ctime.nsec != 0 => LOCAL_DIRTY_WINDOW,
            _ => DIRTY_WINDOW,
        };
        let window = window.as_nanos() as i128;
        let latest = self.mtime.nanos().max(self.ctime.nanos());
        latest + window <= checked_at.nanos()
    }
}

/// What the index was built from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// [`super::UidlFormat::fingerprint`] of the template the UIDLs were made with.
    pub format: u32,
    /// When the identities below were taken (before any of them).
    pub checked_at: Stamp,
    /// `new/` before it was read.
    pub new: Identity,
    /// `cur/` before it was read.
    pub cur: Identity,
    /// The UIDL source files before they were read (`dovecot-uidlist`, or
    /// Courier's two folded into one), or absent.
    pub uidlist: Identity,
    /// The Maildir itself, taken before the UIDL source files were found
    /// absent (absent: not recorded). Creating a name in a directory changes
    /// its times, so while the Maildir keeps this identity they are still
    /// absent and a login need not look them up ([`Header::vouches_absent`]).
    pub root: Identity,
    /// When `root` was taken.
    pub root_checked_at: Stamp,
}

/// Which parts of a Maildir a login must read again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stale {
    /// `new/` changed (or may have).
    pub new: bool,
    /// `cur/` changed (or may have).
    pub cur: bool,
    /// UIDLs and order must be made again (uidlist or format changed).
    pub uidls: bool,
}

impl Stale {
    /// Nothing to read: the index is the mailbox.
    pub fn none(&self) -> bool {
        !(self.new || self.cur || self.uidls)
    }
}

impl Header {
    /// True when the UIDL source files are known to be still absent: they
    /// were, the Maildir has the identity it had then (`root_now`, taken at
    /// `checked_at`), and that identity was settled when it was recorded.
    pub fn vouches_absent(&self, root_now: &Identity, checked_at: Stamp, times: Times) -> bool {
        self.uidlist == Identity::ABSENT
            && self.root != Identity::ABSENT
            && self.root == *root_now
            && self.root_checked_at <= checked_at
            && self.root.settled_at(self.root_checked_at, times)
    }

    /// True when a later login can trust every identity recorded here: each
    /// was settled when it was taken. An index whose header is not settled
    /// makes the next login read the directories again.
    pub fn settled(&self, times: Times) -> bool {
        [self.new, self.cur, self.uidlist]
            .iter()
            .all(|id| id.settled_at(self.checked_at, times))
    }

    /// Compares what this index was built from with the Maildir `now`.
    pub fn stale(&self, now: &Header, times: Times) -> Stale {
        // A clock that went backwards since the check makes every stored
        // time suspect.
        let clock_ok = self.checked_at <= now.checked_at;
        let fresh = |then: &Identity, now: &Identity| {
            clock_ok && then == now && then.settled_at(self.checked_at, times)
        };
        Stale {
            new: !fresh(&self.new, &now.new),
            cur: !fresh(&self.cur, &now.cur),
            uidls: !fresh(&self.uidlist, &now.uidlist) || self.format != now.format,
        }
    }
}

/// Why an index file was not used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IndexError {
    /// Shorter than its header or than the length it states (a torn write).
    Truncated,
    /// Not an index file at all.
    Foreign,
    /// An index of another format version.
    Version(u32),
    /// The checksum does not match: corrupt or torn.
    Checksum,
    /// Checksummed but inconsistent (written by a broken writer).
    Malformed(&'static str),
}

impl fmt::Display for IndexError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IndexError::Truncated => f.write_str("truncated"),
            IndexError::Foreign => f.write_str("not a shardpop index"),
            IndexError::Version(v) => write!(f, "version {v}, this server reads {VERSION}"),
            IndexError::Checksum => f.write_str("checksum mismatch"),
            IndexError::Malformed(why) => write!(f, "malformed: {why}"),
        }
    }
}

/// A parsed index: its header and the messages, in POP3 order.
#[derive(Debug)]
pub struct Parsed {
    /// What it was built from.
    pub header: Header,
    /// The entries.
    pub messages: Vec<Message>,
    /// The names the entries point into.
    pub names: Box<str>,
    /// Sum of the entries' octets.
    pub total_octets: u64,
    /// What [`record_root`] needs to rewrite the header without reading the
    /// entries again.
    pub seal: Seal,
}

/// The checksum of a parsed index and of its part after the header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seal {
    crc: u32,
    body_crc: u32,
    body_len: u64,
}

impl Parsed {
    /// The header and the snapshot of the Maildir `dir` this index describes.
    pub fn into_snapshot(self, dir: &Path) -> (Header, Snapshot) {
        let snapshot = Snapshot::from_parts(dir, self.messages, self.names, self.total_octets);
        (self.header, snapshot)
    }
}

/// Little-endian reader over a slice whose length was checked first.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0; N];
        out.copy_from_slice(&self.bytes[self.at..self.at + N]);
        self.at += N;
        out
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take())
    }
    fn i64(&mut self) -> i64 {
        i64::from_le_bytes(self.take())
    }
    fn identity(&mut self) -> Identity {
        let dev = self.u64();
        let ino = self.u64();
        let size = self.u64();
        let mtime_sec = self.i64();
        let ctime_sec = self.i64();
        let mtime_nsec = self.u32();
        let ctime_nsec = self.u32();
        Identity {
            dev,
            ino,
            size,
            mtime: Stamp {
                sec: mtime_sec,
                nsec: mtime_nsec,
            },
            ctime: Stamp {
                sec: ctime_sec,
                nsec: ctime_nsec,
            },
        }
    }
}

/// Parses and checks an index file. Any bytes give an answer, never a panic.
pub fn parse(bytes: &[u8]) -> Result<Parsed, IndexError> {
    if bytes.len() < 16 {
        return Err(if MAGIC.starts_with(bytes) {
            IndexError::Truncated
        } else {
            IndexError::Foreign
        });
    }
    if bytes[..8] != MAGIC {
        return Err(IndexError::Foreign);
    }
    let mut r = Reader { bytes, at: 8 };
    let version = r.u32();
    if version != VERSION {
        return Err(IndexError::Version(version));
    }
    let crc = r.u32();
    if bytes.len() < HEADER_BYTES {
        return Err(IndexError::Truncated);
    }
    let file_len = r.u64();
    if file_len != bytes.len() as u64 {
        return Err(if file_len > bytes.len() as u64 {
            IndexError::Truncated
        } else {
            IndexError::Malformed("longer than it says")
        });
    }
    // The header's part and the rest apart, then combined: the rest's
    // checksum lets `record_root` rewrite the header alone.
    let mut body = crc32fast::Hasher::new();
    body.update(&bytes[HEADER_BYTES..]);
    let seal = Seal {
        crc,
        body_crc: body.clone().finalize(),
        body_len: (bytes.len() - HEADER_BYTES) as u64,
    };
    let mut whole = crc32fast::Hasher::new();
    whole.update(&bytes[16..HEADER_BYTES]);
    // `combine` cost ~2,700 instructions per login whatever the length (a
    // 32×32 bit-matrix power; callgrind of 10-message logins, and the
    // login's whole parse fell from ~7,700 to ~5,500 without it:
    // docs/benchmarks.md, ninth session). A login's index is small, a big
    // mailbox's is not.
    if bytes.len() - HEADER_BYTES <= COMBINE_ABOVE {
        whole.update(&bytes[HEADER_BYTES..]);
    } else {
        whole.combine(&body);
    }
    if whole.finalize() != crc {
        return Err(IndexError::Checksum);
    }
    let format = r.u32();
    let count = r.u32() as usize;
    let total_octets = r.u64();
    let names_len = r.u32() as usize;
    let _reserved = r.u32();
    let checked_at = Stamp {
        sec: r.i64(),
        nsec: r.u32(),
    };
    let _reserved = r.u32();
    let header = Header {
        format,
        checked_at,
        new: r.identity(),
        cur: r.identity(),
        uidlist: r.identity(),
        root: r.identity(),
        root_checked_at: Stamp {
            sec: r.i64(),
            nsec: r.u32(),
        },
    };
    let _reserved = r.u32();
    debug_assert_eq!(r.at, HEADER_BYTES);
    let body = bytes.len() - HEADER_BYTES;
    if count
        .checked_mul(ENTRY_BYTES)
        .and_then(|e| e.checked_add(names_len))
        != Some(body)
    {
        return Err(IndexError::Malformed("sections do not add up"));
    }
    let names_at = HEADER_BYTES + count * ENTRY_BYTES;
    let names = std::str::from_utf8(&bytes[names_at..])
        .map_err(|_| IndexError::Malformed("names are not UTF-8"))?;
    let mut messages = Vec::with_capacity(count);
    let mut sum = 0u64;
    // Fixed-size chunks: each field read has no bounds check of its own.
    for e in bytes[HEADER_BYTES..names_at].chunks_exact(ENTRY_BYTES) {
        let e: &[u8; ENTRY_BYTES] = e.try_into().expect("chunks_exact");
        let m = decode_entry(e);
        check_entry(&m, names)?;
        sum = sum
            .checked_add(m.octets)
            .ok_or(IndexError::Malformed("octets overflow"))?;
        messages.push(m);
    }
    if sum != total_octets {
        return Err(IndexError::Malformed("total octets"));
    }
    Ok(Parsed {
        header,
        messages,
        names: names.into(),
        total_octets,
        seal,
    })
}

/// One 24-byte entry (see the layout in the module comment).
fn decode_entry(e: &[u8; ENTRY_BYTES]) -> Message {
    let u64_at = |i: usize| {
        u64::from_le_bytes([
            e[i],
            e[i + 1],
            e[i + 2],
            e[i + 3],
            e[i + 4],
            e[i + 5],
            e[i + 6],
            e[i + 7],
        ])
    };
    Message {
        octets: u64_at(0),
        file_bytes: u64_at(8),
        name_at: u32::from_le_bytes([e[16], e[17], e[18], e[19]]),
        name_len: e[20],
        base_len: e[21],
        uidl_len: e[22],
        flags: e[23],
    }
}

/// Every range an entry names lies in `names` on character boundaries, and
/// its UIDL is a valid RFC 1939 unique-id: the accessors of [`Snapshot`] can
/// then slice without checks. Works on bytes (one pass per range, no
/// per-character decoding): it runs for every message at every login.
fn check_entry(m: &Message, names: &str) -> Result<(), IndexError> {
    let bytes = names.as_bytes();
    let at = m.name_at as usize;
    let end = at + usize::from(m.name_len);
    let base_end = at + usize::from(m.base_len);
    if end > bytes.len() {
        return Err(IndexError::Malformed("name out of range"));
    }
    if base_end > end {
        return Err(IndexError::Malformed("base name out of range"));
    }
    // `names` is UTF-8, so a range is on character boundaries when the
    // bytes at its ends do not continue a character.
    if [at, end, base_end]
        .iter()
        .any(|&i| !names.is_char_boundary(i))
    {
        return Err(IndexError::Malformed("not on a character boundary"));
    }
    let base = &bytes[at..base_end];
    // A base name holds no ':' (that starts the info suffix). Folded, not
    // searched: names are short and this runs for every message.
    let colon = base.iter().fold(false, |seen, &b| seen | (b == b':'));
    if m.name_len == 0 || base.is_empty() || colon || m.flags & !FLAG_IN_NEW != 0 {
        return Err(IndexError::Malformed("entry"));
    }
    let uidl = match m.uidl_len {
        0 => base,
        n => bytes
            .get(end..end + usize::from(n))
            .ok_or(IndexError::Malformed("UIDL out of range"))?,
    };
    if uidl.len() > UIDL_BYTES_MAX || !super::maildir::all_printable(uidl) {
        return Err(IndexError::Malformed("UIDL"));
    }
    Ok(())
}

/// The bytes of the index of `snapshot`, built as `header` says.
pub fn encode(header: &Header, snapshot: &Snapshot) -> Vec<u8> {
    let (messages, names) = snapshot.table();
    let len = HEADER_BYTES + messages.len() * ENTRY_BYTES + names.len();
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&[0; 4]); // checksum, set last
    out.extend_from_slice(&(len as u64).to_le_bytes());
    out.extend_from_slice(&header.format.to_le_bytes());
    out.extend_from_slice(&(messages.len() as u32).to_le_bytes());
    out.extend_from_slice(&snapshot.total_octets().to_le_bytes());
    out.extend_from_slice(&(names.len() as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&header.checked_at.sec.to_le_bytes());
    out.extend_from_slice(&header.checked_at.nsec.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    for id in [&header.new, &header.cur, &header.uidlist] {
        put_identity(&mut out, id);
    }
    put_root(&mut out, &header.root, header.root_checked_at);
    debug_assert_eq!(out.len(), HEADER_BYTES);
    for m in messages {
        out.extend_from_slice(&m.octets.to_le_bytes());
        out.extend_from_slice(&m.file_bytes.to_le_bytes());
        out.extend_from_slice(&m.name_at.to_le_bytes());
        out.extend_from_slice(&[m.name_len, m.base_len, m.uidl_len, m.flags]);
    }
    out.extend_from_slice(names.as_bytes());
    let crc = crc32fast::hash(&out[16..]);
    out[12..16].copy_from_slice(&crc.to_le_bytes());
    out
}

fn put_identity(out: &mut Vec<u8>, id: &Identity) {
    let start = out.len();
    out.extend_from_slice(&id.dev.to_le_bytes());
    out.extend_from_slice(&id.ino.to_le_bytes());
    out.extend_from_slice(&id.size.to_le_bytes());
    out.extend_from_slice(&id.mtime.sec.to_le_bytes());
    out.extend_from_slice(&id.ctime.sec.to_le_bytes());
    out.extend_from_slice(&id.mtime.nsec.to_le_bytes());
    out.extend_from_slice(&id.ctime.nsec.to_le_bytes());
    debug_assert_eq!(out.len() - start, IDENTITY_BYTES);
}

/// The header's last part: the Maildir's identity and when it was taken.
fn put_root(out: &mut Vec<u8>, root: &Identity, at: Stamp) {
    put_identity(out, root);
    out.extend_from_slice(&at.sec.to_le_bytes());
    out.extend_from_slice(&at.nsec.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
}

/// Records, in place, that the UIDL source files were absent while the
/// Maildir had the identity `root` at `at`, in the index open in `file`
/// (read and write) if it is still the one parsed with `seal`. Only the
/// header changes (read and written back, 272 bytes; the checksum of the
/// rest is known from the parse) and no name is created, so the Maildir
/// keeps the identity recorded (writing a new index and renaming it into
/// the Maildir would change it). A torn write fails the checksum and the
/// index is rebuilt. The caller holds the mailbox lock, as every reader and
/// writer of the index does.
pub fn record_root(file: &fs::File, seal: &Seal, root: &Identity, at: Stamp) -> io::Result<bool> {
    use std::os::unix::fs::FileExt;
    let mut header = [0u8; HEADER_BYTES];
    file.read_exact_at(&mut header, 0)?;
    let file_len = u64::from_le_bytes(header[16..24].try_into().expect("8 bytes"));
    if header[..8] != MAGIC
        || header[8..12] != VERSION.to_le_bytes()
        || header[12..16] != seal.crc.to_le_bytes()
        || file_len != HEADER_BYTES as u64 + seal.body_len
    {
        return Ok(false);
    }
    let mut tail = Vec::with_capacity(HEADER_BYTES - ROOT_AT);
    put_root(&mut tail, root, at);
    header[ROOT_AT..].copy_from_slice(&tail);
    let mut crc = crc32fast::Hasher::new();
    crc.update(&header[16..]);
    crc.combine(&crc32fast::Hasher::new_with_initial_len(
        seal.body_crc,
        seal.body_len,
    ));
    header[12..16].copy_from_slice(&crc.finalize().to_le_bytes());
    file.write_all_at(&header[12..], 12)?;
    Ok(true)
}

/// Reads the index at `path`: `None` when there is none or it cannot be
/// used (the reason is logged once).
pub fn read(path: &Path) -> Option<Parsed> {
    read_opened(fs::File::open(path), || path.to_path_buf(), false).unwrap_or(None)
}

/// [`read`] of the index `name` in the Maildir `root`. The one error is
/// `WouldBlock`, from a `root` that must not wait ([`super::root::Root::open_now`])
/// when the file's entry or its pages are not cached.
pub fn read_in(root: &super::root::Root<'_>, name: &str) -> io::Result<Option<Parsed>> {
    read_opened(
        root.open_file(name, false),
        || root.dir().join(name),
        root.is_now(),
    )
}

/// `path` names the file in a warning only. `now`: read only what the page
/// cache holds, and give back `WouldBlock` instead of waiting.
fn read_opened(
    opened: io::Result<fs::File>,
    path: impl Fn() -> PathBuf,
    now: bool,
) -> io::Result<Option<Parsed>> {
    // A caller that must not wait leaves every failure to the pool, which
    // reads again and logs it (once) as its own.
    let would_block = || io::Error::from(io::ErrorKind::WouldBlock);
    let file = match opened {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(_) if now => return Err(would_block()),
        Err(e) => {
            warn_once(&path(), "read", &e);
            return Ok(None);
        }
    };
    READ_BUFFER.with(|buffer| {
        let mut buffer = buffer.borrow_mut();
        let mut file = file;
        let parsed = match read_whole(&mut file, &mut buffer, now) {
            Ok(bytes) => parse(bytes),
            Err(_) if now => return Err(would_block()),
            Err(e) => {
                warn_once(&path(), "read", &e);
                return Ok(None);
            }
        };
        if buffer.len() > READ_BUFFER_KEPT_MAX {
            *buffer = Vec::new();
        }
        Ok(match parsed {
            Ok(parsed) => Some(parsed),
            Err(_) if now => return Err(would_block()),
            Err(IndexError::Version(v)) if v < VERSION => {
                tracing::debug!(index = %path().display(), version = v, "mailbox index of an older version: rebuilt");
                None
            }
            Err(e) => {
                warn_once(&path(), "parse", &e);
                None
            }
        })
    })
}

thread_local! {
    /// A worker's buffer for index files: zeroed once, reused by every
    /// login (`fs::read` costs an fstat, a second read and an allocation).
    static READ_BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The largest index a caller that must not wait reads (a login on a
/// shard): about 800 messages. The whole open of a 780-message mailbox
/// took 42–43 µs on a shard here (`cargo bench --bench login_open`). A
/// larger mailbox's login is the pool's, so it never holds up the other
/// connections of a shard for longer.
const NOW_INDEX_BYTES_MAX: usize = 64 << 10;

/// Index files up to this size keep their buffer between logins.
const READ_BUFFER_KEPT_MAX: usize = 4 << 20;

/// Reads `file` to its end into `buffer` (grown as needed); returns the
/// bytes read. A read that comes back short of the room it had is the end
/// of a regular file, so a small index costs one read(2). Should a short
/// read ever stop early, the checksum refuses what was read.
fn read_whole<'b>(file: &mut fs::File, buffer: &'b mut Vec<u8>, now: bool) -> io::Result<&'b [u8]> {
    use std::io::Read;
    if now {
        return read_whole_cached(file, buffer);
    }
    let mut filled = 0;
    loop {
        if filled == buffer.len() {
            let grown = (buffer.len() * 2).max(64 << 10);
            buffer.resize(grown, 0);
        }
        let room = buffer.len() - filled;
        match file.read(&mut buffer[filled..]) {
            Ok(n) => {
                filled += n;
                if n < room {
                    return Ok(&buffer[..filled]);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// [`read_whole`] from the page cache alone, for a caller that must not
/// wait: `WouldBlock` when a page is not cached or the file is larger than
/// [`NOW_INDEX_BYTES_MAX`]. `RWF_NOWAIT` may stop short at a page that is
/// not cached, so a short read is the end only when it holds the length its
/// header gives; otherwise the next read says (0 at the real end, where
/// the checksum then judges what was read).
fn read_whole_cached<'b>(file: &fs::File, buffer: &'b mut Vec<u8>) -> io::Result<&'b [u8]> {
    let room = NOW_INDEX_BYTES_MAX + 1;
    if buffer.len() < room {
        buffer.resize(room, 0);
    }
    let mut filled = 0;
    loop {
        let n = match read_cached(file, &mut buffer[filled..room], filled as u64) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Ok(&buffer[..filled]);
        }
        filled += n;
        if filled == room {
            return Err(io::Error::from(io::ErrorKind::WouldBlock));
        }
        if holds_whole_file(&buffer[..filled]) {
            return Ok(&buffer[..filled]);
        }
    }
}

/// The bytes read so far are as long as the file length in their header.
fn holds_whole_file(bytes: &[u8]) -> bool {
    bytes.get(16..24).is_some_and(|len| {
        u64::from_le_bytes(len.try_into().expect("8 bytes")) == bytes.len() as u64
    })
}

/// Reads at `offset` what the page cache holds; `WouldBlock` when the next
/// byte is not cached, and a short read may stop before the end of the file.
fn read_cached(file: &fs::File, buffer: &mut [u8], offset: u64) -> io::Result<usize> {
    rustix::io::preadv2(
        file,
        &mut [io::IoSliceMut::new(buffer)],
        offset,
        rustix::io::ReadWriteFlags::NOWAIT,
    )
    .map_err(super::root::rustix_error)
}

/// Writes the index of `snapshot` to `path` through a temporary file in the
/// same directory and a rename. The directory is created when missing
/// (`:INDEX=` directories are made at first login).
pub fn write(path: &Path, header: &Header, snapshot: &Snapshot) -> io::Result<()> {
    let bytes = encode(header, snapshot);
    let tmp = temp_name(path);
    let result = match fs::write(&tmp, &bytes) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => match path.parent() {
            Some(parent) => {
                fs::create_dir_all(parent)?;
                fs::write(&tmp, &bytes)
            }
            None => Err(e),
        },
        other => other,
    }
    .and_then(|()| fs::rename(&tmp, path));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// `<index>.<token>.tmp`: the token is random per process, so two nodes on
/// one shared Maildir never write the same temporary file (one process
/// writes a mailbox's index only while it holds the mailbox lock).
fn temp_name(path: &Path) -> PathBuf {
    static TOKEN: OnceLock<u64> = OnceLock::new();
    let token = TOKEN.get_or_init(|| {
        let mut bytes = [0u8; 8];
        match ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes) {
            Ok(()) => u64::from_le_bytes(bytes),
            Err(_) => u64::from(std::process::id()) << 32 | u64::from(Stamp::now().nsec),
        }
    });
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{token:016x}.tmp"));
    PathBuf::from(name)
}

/// How many distinct (index, cause) pairs are remembered before the memory
/// of what was logged starts over.
const LOGGED_MAX: usize = 4096;

/// Logs a problem with an index once per file and kind of problem, so an
/// unwritable Maildir does not log at every login.
pub fn warn_once(path: &Path, what: &str, error: &dyn fmt::Display) {
    static LOGGED: Mutex<Option<HashSet<u64>>> = Mutex::new(None);
    let mut h = DefaultHasher::new();
    (path, what).hash(&mut h);
    let key = h.finish();
    let first = {
        let mut logged = LOGGED.lock();
        let set = logged.get_or_insert_with(HashSet::new);
        if set.len() >= LOGGED_MAX {
            set.clear();
        }
        set.insert(key)
    };
    if first {
        tracing::warn!(index = %path.display(), error = %error, "mailbox index: cannot {what}; the Maildir is read instead");
    } else {
        tracing::debug!(index = %path.display(), error = %error, "mailbox index: cannot {what}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::location::IndexDir;
    use crate::store::maildir;
    use crate::store::uidlist::UidlFormat;

    /// A real index: two messages, one with a digest UIDL and one in new/.
    fn sample() -> Vec<u8> {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        maildir::create(dir).unwrap();
        fs::write(dir.join("cur/1.a,S=2,W=3:2,S"), b"x\n").unwrap();
        fs::write(dir.join(format!("cur/2.{}:2,", "b".repeat(80))), b"yy\n").unwrap();
        maildir::load(dir, &IndexDir::Maildir, &UidlFormat::parse("%f").unwrap()).unwrap();
        fs::read(dir.join(INDEX_FILE)).unwrap()
    }

    #[test]
    fn encode_and_parse_agree() {
        let bytes = sample();
        let parsed = parse(&bytes).unwrap();
        assert_eq!(parsed.messages.len(), 2);
        assert_eq!(parsed.total_octets, 3 + 4);
        let snapshot = Snapshot::from_parts(
            Path::new("/m"),
            parsed.messages,
            parsed.names,
            parsed.total_octets,
        );
        assert_eq!(snapshot.file_name(0), "1.a,S=2,W=3:2,S");
        assert_eq!(snapshot.file_bytes(0), Some(2));
        assert_eq!(snapshot.uidl(1).len(), 40, "over 70 bytes: a digest");
        assert_eq!(encode(&parsed.header, &snapshot), bytes);
    }

    #[test]
    fn the_maildir_is_recorded_in_place_only_over_the_index_parsed() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join(INDEX_FILE);
        let bytes = sample();
        fs::write(&path, &bytes).unwrap();
        let parsed = parse(&bytes).unwrap();
        let (header, seal) = (parsed.header, parsed.seal);
        let root = Identity {
            dev: 7,
            ino: 9,
            size: 4096,
            mtime: Stamp { sec: 100, nsec: 5 },
            ctime: Stamp { sec: 101, nsec: 6 },
        };
        let at = Stamp { sec: 200, nsec: 7 };
        let open = || {
            fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .unwrap()
        };
        // Another index than the one parsed: nothing written.
        let other = Seal {
            crc: seal.crc ^ 1,
            ..seal
        };
        assert!(!record_root(&open(), &other, &root, at).unwrap());
        let shorter = Seal {
            body_len: seal.body_len - 1,
            ..seal
        };
        assert!(!record_root(&open(), &shorter, &root, at).unwrap());
        assert_eq!(fs::read(&path).unwrap(), bytes);
        assert!(record_root(&open(), &seal, &root, at).unwrap());
        let after = fs::read(&path).unwrap();
        assert_eq!(after.len(), bytes.len());
        assert_eq!(
            after[HEADER_BYTES..],
            bytes[HEADER_BYTES..],
            "entries untouched"
        );
        let parsed = parse(&after).expect("checksum and all");
        assert_eq!(
            parsed.header,
            Header {
                root,
                root_checked_at: at,
                ..header
            }
        );
        let later = Stamp { sec: 300, nsec: 0 };
        assert!(parsed.header.vouches_absent(&root, later, Times::Other));
        let moved = Identity { ino: 8, ..root };
        assert!(!parsed.header.vouches_absent(&moved, later, Times::Other));
        let earlier = Stamp { sec: 150, nsec: 0 };
        assert!(
            !parsed.header.vouches_absent(&root, earlier, Times::Other),
            "clock went back"
        );
        // Recorded again over the updated file.
        let root2 = Identity { size: 8192, ..root };
        assert!(record_root(&open(), &parsed.seal, &root2, later).unwrap());
        assert_eq!(parse(&fs::read(&path).unwrap()).unwrap().header.root, root2);
        // A torn update fails the checksum.
        let mut torn = after.clone();
        torn[ROOT_AT..ROOT_AT + 8].copy_from_slice(&bytes[ROOT_AT..ROOT_AT + 8]);
        assert_eq!(parse(&torn).unwrap_err(), IndexError::Checksum);
    }

    #[test]
    fn an_index_of_the_previous_version_is_rebuilt() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join(INDEX_FILE);
        let mut bytes = sample();
        bytes[8..12].copy_from_slice(&(VERSION - 1).to_le_bytes());
        fs::write(&path, &bytes).unwrap();
        assert_eq!(parse(&bytes).unwrap_err(), IndexError::Version(VERSION - 1));
        assert!(read(&path).is_none());
    }

    #[test]
    fn files_of_every_size_are_read_whole_and_the_buffer_keeps_nothing_stale() {
        let tmp = tempfile::tempdir().unwrap();
        let mut buffer = Vec::new();
        for len in [0, 1, 1020, 65535, 65536, 65537, 300_000, 12] {
            let body: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
            let path = tmp.path().join(format!("f{len}"));
            fs::write(&path, &body).unwrap();
            let read = read_whole(&mut fs::File::open(&path).unwrap(), &mut buffer, false).unwrap();
            assert_eq!(read, &body[..], "{len} bytes");
        }
        // Through `read`: a large index, then a small one in the same
        // buffer, each parsed from its own bytes only.
        let small = sample();
        let dir = tmp.path().join("big");
        maildir::create(&dir).unwrap();
        for i in 0..4000 {
            fs::write(dir.join(format!("cur/{i}.x,S=2,W=3:2,")), b"x\n").unwrap();
        }
        maildir::load(&dir, &IndexDir::Maildir, &UidlFormat::parse("%f").unwrap()).unwrap();
        assert!(fs::metadata(dir.join(INDEX_FILE)).unwrap().len() > 65536);
        assert_eq!(read(&dir.join(INDEX_FILE)).unwrap().messages.len(), 4000);
        // Above COMBINE_ABOVE the checksum is combined, not hashed twice:
        // it still refuses a flipped bit anywhere.
        let big = fs::read(dir.join(INDEX_FILE)).unwrap();
        assert!(big.len() - HEADER_BYTES > COMBINE_ABOVE);
        for at in [HEADER_BYTES - 1, HEADER_BYTES, big.len() - 1] {
            let mut torn = big.clone();
            torn[at] ^= 0x10;
            assert_eq!(parse(&torn).unwrap_err(), IndexError::Checksum, "{at}");
        }
        let small_path = tmp.path().join("small.index");
        fs::write(&small_path, &small).unwrap();
        assert_eq!(read(&small_path).unwrap().messages.len(), 2);
    }

    #[test]
    fn every_truncation_and_every_flipped_bit_is_refused() {
        let bytes = sample();
        for len in 0..bytes.len() {
            assert!(parse(&bytes[..len]).is_err(), "truncated to {len}");
        }
        for at in 0..bytes.len() {
            for bit in 0..8 {
                let mut b = bytes.clone();
                b[at] ^= 1 << bit;
                assert!(parse(&b).is_err(), "bit {bit} of byte {at}");
            }
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(parse(&longer).is_err());
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let bytes = sample();
        assert_eq!(parse(&bytes[..100]).unwrap_err(), IndexError::Truncated);
        assert_eq!(parse(b"SPOP").unwrap_err(), IndexError::Truncated);
        assert_eq!(
            parse(b"dovecot.index....").unwrap_err(),
            IndexError::Foreign
        );
        let mut next = bytes.clone();
        next[8..12].copy_from_slice(&(VERSION + 1).to_le_bytes());
        assert_eq!(parse(&next).unwrap_err(), IndexError::Version(VERSION + 1));
        let mut torn = bytes.clone();
        torn[HEADER_BYTES] ^= 1;
        assert_eq!(parse(&torn).unwrap_err(), IndexError::Checksum);
        // A consistent checksum over inconsistent content (a broken writer).
        let mut bad = bytes.clone();
        bad[HEADER_BYTES + 16..HEADER_BYTES + 20].copy_from_slice(&u32::MAX.to_le_bytes());
        let crc = crc32fast::hash(&bad[16..]);
        bad[12..16].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(parse(&bad), Err(IndexError::Malformed(_))));
    }

    #[test]
    fn entries_a_broken_writer_could_make_are_refused() {
        let bytes = sample();
        let e0 = HEADER_BYTES;
        let e1 = HEADER_BYTES + ENTRY_BYTES;
        let names_at = HEADER_BYTES + 2 * ENTRY_BYTES;
        let base0 = "1.a,S=2,W=3".len() as u8;
        let with_crc = |edit: &dyn Fn(&mut Vec<u8>)| {
            let mut b = bytes.clone();
            edit(&mut b);
            let crc = crc32fast::hash(&b[16..]);
            b[12..16].copy_from_slice(&crc.to_le_bytes());
            parse(&b)
        };
        assert_eq!(bytes[e0 + 21], base0, "the sample is as this test thinks");
        type Edit<'a> = &'a dyn Fn(&mut Vec<u8>);
        let cases: [(&str, Edit<'_>); 8] = [
            ("a base name with ':'", &|b| b[e0 + 21] = b[e0 + 20]),
            ("an empty name", &|b| b[e0 + 20] = 0),
            ("an empty base name", &|b| b[e1 + 21] = 0),
            ("a base longer than the name", &|b| {
                b[e0 + 21] = b[e0 + 20] + 1
            }),
            ("a UIDL over 70 bytes", &|b| b[e1 + 22] = 71),
            ("a UIDL past the names", &|b| b[e1 + 22] = 60),
            ("a space in a base-name UIDL", &|b| b[names_at + 1] = b' '),
            ("an unknown flag", &|b| b[e0 + 23] = 2),
        ];
        for (what, edit) in cases {
            assert!(
                matches!(with_crc(edit), Err(IndexError::Malformed(_))),
                "{what}"
            );
        }
        assert!(with_crc(&|_| {}).is_ok());
    }

    /// A directory's identity with these times.
    fn dir_with(mtime: Stamp, ctime: Stamp) -> Identity {
        Identity {
            dev: 1,
            ino: 2,
            size: 3,
            mtime,
            ctime,
        }
    }

    #[test]
    fn times_this_kernel_stamped_settle_after_the_local_window() {
        let id = dir_with(
            Stamp { sec: 100, nsec: 0 },
            Stamp {
                sec: 100,
                nsec: 500_000_000,
            },
        );
        let at = |sec, nsec| Stamp { sec, nsec };
        // A local file system: 100 ms after the latest time.
        assert!(!id.settled_at(at(100, 599_999_999), Times::Local));
        assert!(id.settled_at(at(100, 600_000_000), Times::Local));
        // Anything else, at the same moments: 2 s.
        assert!(!id.settled_at(at(100, 600_000_000), Times::Other));
        assert!(!id.settled_at(at(102, 499_999_999), Times::Other));
        assert!(id.settled_at(at(102, 500_000_000), Times::Other));
        // Seconds only (no nanoseconds in the ctime the kernel set): the
        // file system may keep whole seconds, so 2 s even when local.
        let coarse = Identity {
            ctime: at(100, 0),
            mtime: at(100, 0),
            ..id
        };
        assert!(!coarse.settled_at(at(101, 0), Times::Local));
        assert!(coarse.settled_at(at(102, 0), Times::Local));
        // A future time is never settled.
        assert!(!id.settled_at(at(99, 0), Times::Local));
        let then = Header {
            format: 1,
            checked_at: at(100, 550_000_000),
            new: id,
            cur: id,
            uidlist: Identity::ABSENT,
            ..Header::default()
        };
        assert!(!then.settled(Times::Local));
        let later = Header {
            checked_at: at(100, 700_000_000),
            ..then
        };
        assert!(later.settled(Times::Local));
        assert!(!later.settled(Times::Other));
        assert!(
            later
                .stale(
                    &Header {
                        checked_at: at(101, 0),
                        ..later
                    },
                    Times::Local
                )
                .none()
        );
        let s = later.stale(
            &Header {
                checked_at: at(101, 0),
                ..later
            },
            Times::Other,
        );
        assert!(s.new && s.cur);
    }

    #[test]
    fn identities_settle_after_the_dirty_window() {
        let id = dir_with(Stamp { sec: 100, nsec: 5 }, Stamp { sec: 101, nsec: 0 });
        assert!(!id.settled_at(
            Stamp {
                sec: 102,
                nsec: 999_999_999
            },
            Times::Other
        ));
        assert!(id.settled_at(Stamp { sec: 103, nsec: 0 }, Times::Other));
        assert!(
            !id.settled_at(Stamp { sec: 50, nsec: 0 }, Times::Other),
            "a time in the future"
        );
        assert!(Identity::ABSENT.settled_at(Stamp::default(), Times::Other));
        let then = Header {
            format: 1,
            checked_at: Stamp { sec: 200, nsec: 0 },
            new: id,
            cur: id,
            uidlist: Identity::ABSENT,
            ..Header::default()
        };
        assert!(
            then.stale(
                &Header {
                    checked_at: Stamp { sec: 300, nsec: 0 },
                    ..then
                },
                Times::Other
            )
            .none()
        );
        let back = then.stale(
            &Header {
                checked_at: Stamp { sec: 199, nsec: 0 },
                ..then
            },
            Times::Other,
        );
        assert!(
            back.new && back.cur && back.uidls,
            "the clock went backwards"
        );
        let moved = Identity { ino: 9, ..id };
        let s = then.stale(&Header { cur: moved, ..then }, Times::Other);
        assert!(s.cur && !s.new && !s.uidls);
        let s = then.stale(&Header { format: 2, ..then }, Times::Other);
        assert!(s.uidls && !s.cur);
    }
}
