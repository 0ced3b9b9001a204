//! A passwd-file in a temp dir, for the auth layer's tests.

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use super::Passdb;

/// A passwd-file that lives as long as the fixture.
pub(crate) struct Fixture {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) path: PathBuf,
}

impl Fixture {
    pub(crate) fn new(text: &str) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        fs::write(&path, text).unwrap();
        Fixture { dir, path }
    }

    /// A passdb that checks the file on every lookup.
    pub(crate) fn open(&self) -> Passdb {
        Passdb::open_with_interval(&self.path, Duration::ZERO).unwrap()
    }

    /// The passwd-file passdb itself, for tests of its internals.
    pub(crate) fn open_file(&self) -> super::passdb::FileDb {
        super::passdb::FileDb::open_with_interval(&self.path, Duration::ZERO).unwrap()
    }

    /// Replaces the file by rename, as editors and config tools do.
    pub(crate) fn replace(&self, text: &str) {
        let next = self.dir.path().join("users.new");
        fs::write(&next, text).unwrap();
        fs::rename(&next, &self.path).unwrap();
    }
}
