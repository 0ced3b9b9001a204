//! Message bodies as read-only memory maps (memmap2), so RETR streams from
//! the page cache without copying the file into the heap.
//!
//! This is one of the few modules allowed `unsafe`: mapping a file is unsafe
//! because another process could change it underneath us. Maildir files are
//! written once in `tmp/` and never modified after delivery; deletion (unlink)
//! keeps our mapping valid. Truncation by another process is the remaining
//! hazard (SIGBUS on access past the new end); see `engine::sigbus`.

use std::fs::File;
use std::io;
use std::path::Path;

use memmap2::Mmap;

/// A whole message file, mapped read-only.
#[derive(Debug)]
pub struct MessageMap {
    /// `None` for an empty file (a zero-length mapping is not allowed).
    map: Option<Mmap>,
}

impl MessageMap {
    /// Opens and maps `path`.
    pub fn open(path: &Path) -> io::Result<MessageMap> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        if len == 0 {
            return Ok(MessageMap { map: None });
        }
        // SAFETY: the mapping is read-only and private to this process. Maildir
        // files are immutable once delivered (writers create them in tmp/ and
        // rename them in), and an unlink does not invalidate a live mapping.
        // A concurrent truncation would fault on access instead of giving torn
        // data; the engine's SIGBUS guard turns that fault into an error for the
        // one session that touched it.
        let map = unsafe { Mmap::map(&file)? };
        // Reading pages ahead is what RETR does next; tell the kernel.
        let _ = map.advise(memmap2::Advice::Sequential);
        Ok(MessageMap { map: Some(map) })
    }

    /// The file's bytes.
    pub fn as_slice(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }
}
