//! The harness's view of the corpus on disk: the users file, each user's Maildir,
//! the message a UIDL names, and re-seeding after `delete` runs.
//!
//! Mapping messages to files: a session asks the server for `UIDL`, and the UIDL
//! is taken as the Maildir base name (the file name before `:`). That is what
//! shardpop and Dovecot send with `pop3_uidl_format = %f`, which the benchmark
//! script sets for both; the body is then compared byte for byte with that file.
//!
//! Fallback, for servers whose UIDLs name no file (both default to Dovecot's
//! `%08Xu%08Xv`): the body is matched by content among the user's files of the
//! announced size (`+OK n octets`, or LIST): byte for byte when one file has
//! that size, by a 64-bit hash of the CRLF content when several do. Each file
//! matches at most once per session. This proves the server sent intact mail
//! from the mailbox, but not that message k is the k-th file, so such bodies
//! are counted apart (`unmapped`, `matched_by_content`).
//!
//! File access here is blocking and runs on the load threads; it happens once per
//! message (the CRLF form is cached) and per `delete` session, not per byte.

use crate::template::MailLocation;
use crate::verify::to_crlf;
use std::collections::HashMap;
use std::hash::Hasher;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// One line of the users file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Login name.
    pub name: String,
    /// Plain-text password, sent with `PASS`.
    pub pass: String,
}

/// Parses a users file: `user password` per line; blank lines and `#` comments skipped.
pub fn parse_users(text: &str) -> Result<Vec<User>, String> {
    let mut users = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut words = line.split_whitespace();
        let (Some(name), Some(pass), None) = (words.next(), words.next(), words.next()) else {
            return Err(format!("line {}: want `user password`", number + 1));
        };
        users.push(User {
            name: name.to_owned(),
            pass: pass.to_owned(),
        });
    }
    if users.is_empty() {
        return Err("no users in the file".into());
    }
    Ok(users)
}

/// The Maildir base name of a file name or UIDL: everything before the first `:`.
pub fn base_name(name: &[u8]) -> &[u8] {
    name.split(|&b| b == b':').next().unwrap_or(name)
}

/// A message file moved aside before `DELE`, to be put back after the session.
#[derive(Debug)]
pub struct Stash {
    user: usize,
    base: Vec<u8>,
    /// Where the message lived.
    original: PathBuf,
    /// The hard link in the Maildir's `tmp/` that keeps the content alive.
    link: PathBuf,
}

/// A Maildir listing: base name → current path.
type Listing = HashMap<Vec<u8>, PathBuf>;

/// Bytes of CRLF content kept in memory before the cache stops growing.
struct ContentCache {
    map: HashMap<(usize, Vec<u8>), Arc<[u8]>>,
    bytes: usize,
    bytes_max: usize,
}

/// The corpus as seen through a mail-location template.
pub struct Corpus {
    maildirs: Vec<PathBuf>,
    /// Per user: base name → current path, refreshed when a lookup misses.
    index: Vec<Mutex<Option<Listing>>>,
    cache: Mutex<ContentCache>,
    /// (user, base name) → hash of the CRLF content, for the fallback.
    hashes: Mutex<HashMap<(usize, Vec<u8>), u64>>,
}

/// The hash the content fallback compares; `BodyCheck` computes the same one
/// over the received body. SipHash with fixed keys: stable within a process,
/// and streaming-consistent (chunking does not change it).
pub fn content_hasher() -> std::collections::hash_map::DefaultHasher {
    std::collections::hash_map::DefaultHasher::new()
}

/// The `W=` size (RFC 822 size, CRLF line ends) in a Maildir file name.
fn w_size(name: &[u8]) -> Option<u64> {
    let base = base_name(name);
    let at = memchr::memmem::rfind(base, b",W=")? + 3;
    let digits = base[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&base[at..at + digits])
        .ok()?
        .parse()
        .ok()
}

impl Corpus {
    /// Expands the template for every user; each Maildir must exist.
    pub fn new(
        location: &MailLocation,
        users: &[User],
        cache_bytes_max: usize,
    ) -> Result<Self, String> {
        let mut maildirs = Vec::with_capacity(users.len());
        for user in users {
            let dir = location.expand(&user.name).map_err(|e| e.to_string())?;
            if !dir.join("cur").is_dir() {
                return Err(format!("{}: no Maildir (cur/ missing)", dir.display()));
            }
            maildirs.push(dir);
        }
        Ok(Corpus {
            index: users.iter().map(|_| Mutex::new(None)).collect(),
            maildirs,
            cache: Mutex::new(ContentCache {
                map: HashMap::new(),
                bytes: 0,
                bytes_max: cache_bytes_max,
            }),
            hashes: Mutex::new(HashMap::new()),
        })
    }

    /// The current path of the message with this UIDL, rescanning the Maildir once
    /// if the cached listing does not have it. `None`: no such file.
    pub fn path_of(&self, user: usize, uidl: &[u8]) -> Option<PathBuf> {
        let base = base_name(uidl);
        let mut slot = self.index[user].lock().unwrap_or_else(|e| e.into_inner());
        if let Some(path) = slot.as_ref().and_then(|m| m.get(base))
            && path.exists()
        {
            return Some(path.clone());
        }
        let fresh = scan_maildir(&self.maildirs[user]);
        let found = fresh.get(base).cloned();
        *slot = Some(fresh);
        found
    }

    /// The body the server must send for this UIDL. `None`: no such file (unmapped).
    pub fn expected(&self, user: usize, uidl: &[u8]) -> Option<Arc<[u8]>> {
        let key = (user, base_name(uidl).to_vec());
        if let Some(hit) = self.lock_cache().map.get(&key) {
            return Some(hit.clone());
        }
        // A server may rename the file (new/ → cur/, flags) between lookup and
        // read: one retry with a fresh lookup covers that.
        let raw = match std::fs::read(self.path_of(user, uidl)?) {
            Ok(raw) => raw,
            Err(_) => std::fs::read(self.path_of(user, uidl)?).ok()?,
        };
        let content: Arc<[u8]> = Arc::from(to_crlf(&raw));
        let mut cache = self.lock_cache();
        if cache.bytes + content.len() <= cache.bytes_max {
            cache.bytes += content.len();
            cache.map.insert(key, content.clone());
        }
        Some(content)
    }

    /// Fallback: base names of the user's files whose CRLF size is `octets`
    /// (all files when the size is unknown), sorted.
    pub fn candidates(&self, user: usize, octets: Option<u64>) -> Vec<Vec<u8>> {
        let listing = {
            let mut slot = self.index[user].lock().unwrap_or_else(|e| e.into_inner());
            slot.get_or_insert_with(|| scan_maildir(&self.maildirs[user]))
                .clone()
        };
        let mut out: Vec<Vec<u8>> = listing
            .keys()
            .filter(|base| match (octets, w_size(base)) {
                (None, _) => true,
                (Some(want), Some(w)) => want == w,
                (Some(want), None) => self
                    .expected(user, base)
                    .is_some_and(|e| e.len() as u64 == want),
            })
            .cloned()
            .collect();
        out.sort();
        out
    }

    /// Fallback: the content hash of one file (cached).
    pub fn content_hash(&self, user: usize, base: &[u8]) -> Option<u64> {
        let key = (user, base.to_vec());
        if let Some(&h) = self
            .hashes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return Some(h);
        }
        let mut hasher = content_hasher();
        hasher.write(&self.expected(user, base)?);
        let h = hasher.finish();
        self.hashes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, h);
        Some(h)
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, ContentCache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hard-links the message into the Maildir's `tmp/` before it is deleted, so
    /// `settle` can put it back: the corpus stays the same run after run.
    pub fn stash(&self, user: usize, uidl: &[u8]) -> io::Result<Stash> {
        let original = self
            .path_of(user, uidl)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no file for UIDL"))?;
        let base = base_name(uidl).to_vec();
        let name = format!("{}.loadtest-reseed", String::from_utf8_lossy(&base));
        let link = self.maildirs[user].join("tmp").join(name);
        let _ = std::fs::remove_file(&link);
        std::fs::hard_link(&original, &link)?;
        Ok(Stash {
            user,
            base,
            original,
            link,
        })
    }

    /// Puts a stashed message back if the server deleted it (atomically, by rename
    /// from `tmp/`, as a Maildir delivery does), else drops the spare link.
    pub fn settle(&self, stash: Stash) -> io::Result<()> {
        let still_there = {
            let mut slot = self.index[stash.user]
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let fresh = scan_maildir(&self.maildirs[stash.user]);
            let there = fresh.contains_key(&stash.base);
            *slot = Some(fresh);
            there
        };
        if still_there {
            return std::fs::remove_file(&stash.link);
        }
        std::fs::rename(&stash.link, &stash.original)?;
        let mut slot = self.index[stash.user]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(map) = slot.as_mut() {
            map.insert(stash.base, stash.original);
        }
        Ok(())
    }
}

/// Lists `new/` and `cur/`: base name → path. Unreadable directories read as empty
/// (the caller then reports the message as unmapped).
fn scan_maildir(dir: &Path) -> Listing {
    let mut map = HashMap::new();
    for sub in ["new", "cur"] {
        let Ok(entries) = std::fs::read_dir(dir.join(sub)) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let bytes = name.as_encoded_bytes();
            if bytes.starts_with(b".") {
                continue;
            }
            map.insert(base_name(bytes).to_vec(), entry.path());
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_file() {
        let users = parse_users("# comment\nu1 p1\n\n  u2   p2  \n").unwrap();
        assert_eq!(users.len(), 2);
        assert_eq!(
            (users[1].name.as_str(), users[1].pass.as_str()),
            ("u2", "p2")
        );
        assert!(parse_users("u1\n").is_err());
        assert!(parse_users("u1 p 3\n").is_err());
        assert!(parse_users("\n#\n").is_err());
    }

    #[test]
    fn w_sizes() {
        assert_eq!(w_size(b"1.M1.h,S=10,W=12:2,S"), Some(12));
        assert_eq!(w_size(b"1.M1.h,S=10,W=12"), Some(12));
        assert_eq!(w_size(b"1.M1.h,S=10"), None);
        assert_eq!(w_size(b"1.M1.h,W=x"), None);
    }

    #[test]
    fn base_names() {
        assert_eq!(base_name(b"123.M1P2.h,S=5,W=6:2,S"), b"123.M1P2.h,S=5,W=6");
        assert_eq!(base_name(b"123.M1P2.h"), b"123.M1P2.h");
    }

    fn scratch_dir(tag: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("loadtest-corpus-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for sub in ["new", "cur", "tmp"] {
            std::fs::create_dir_all(dir.join("u1/Maildir").join(sub)).unwrap();
        }
        dir
    }

    #[test]
    fn lookup_stash_and_settle() {
        let root = scratch_dir("stash");
        let md = root.join("u1/Maildir");
        std::fs::write(md.join("cur/100.M1.h,S=4,W=6:2,S"), b"a\nb\n").unwrap();
        std::fs::write(md.join("new/200.M2.h,S=2,W=3"), b"c\n").unwrap();
        let location =
            MailLocation::parse(&format!("maildir:{}/%u/Maildir", root.display())).unwrap();
        let users = parse_users("u1 p\n").unwrap();
        let corpus = Corpus::new(&location, &users, 1 << 20).unwrap();

        assert_eq!(
            &*corpus.expected(0, b"100.M1.h,S=4,W=6").unwrap(),
            b"a\r\nb\r\n"
        );
        assert_eq!(&*corpus.expected(0, b"200.M2.h,S=2,W=3").unwrap(), b"c\r\n");
        assert!(corpus.expected(0, b"999.nope").is_none());

        // The content fallback: by W= size, then by hash.
        assert_eq!(
            corpus.candidates(0, Some(6)),
            vec![b"100.M1.h,S=4,W=6".to_vec()]
        );
        assert_eq!(
            corpus.candidates(0, Some(3)),
            vec![b"200.M2.h,S=2,W=3".to_vec()]
        );
        assert!(corpus.candidates(0, Some(7)).is_empty());
        assert_eq!(corpus.candidates(0, None).len(), 2);
        let mut h = content_hasher();
        h.write(b"a\r\n");
        h.write(b"b\r\n");
        assert_eq!(
            corpus.content_hash(0, b"100.M1.h,S=4,W=6"),
            Some(h.finish())
        );

        // A server moving new/ to cur/ behind our back is found by the rescan.
        std::fs::rename(
            md.join("new/200.M2.h,S=2,W=3"),
            md.join("cur/200.M2.h,S=2,W=3:2,"),
        )
        .unwrap();
        assert!(
            corpus
                .path_of(0, b"200.M2.h,S=2,W=3")
                .unwrap()
                .ends_with("cur/200.M2.h,S=2,W=3:2,")
        );

        // Deleted by the server → put back; still there → spare link removed.
        let gone = corpus.stash(0, b"100.M1.h,S=4,W=6").unwrap();
        let kept = corpus.stash(0, b"200.M2.h,S=2,W=3").unwrap();
        std::fs::remove_file(md.join("cur/100.M1.h,S=4,W=6:2,S")).unwrap();
        corpus.settle(gone).unwrap();
        corpus.settle(kept).unwrap();
        assert_eq!(
            std::fs::read(md.join("cur/100.M1.h,S=4,W=6:2,S")).unwrap(),
            b"a\nb\n"
        );
        assert_eq!(std::fs::read_dir(md.join("tmp")).unwrap().count(), 0);
        let _ = std::fs::remove_dir_all(&root);
    }
}
