//! A login's mailbox open as a shard answers it (`Mailbox::open_now`:
//! cached lookups, `RWF_NOWAIT` read of the index, nothing written) against
//! the worker pool's (`Mailbox::open_for`) in the same group, on a warm,
//! settled Maildir of 10 messages and of 780 (an index just under the 64 KiB
//! a shard reads). Each iteration opens, locks, reads the index, checks the
//! directories and drops the mailbox (closing the lock).
//!
//! `cargo bench --bench login_open -- --warm-up-time 1 --measurement-time 3`
//!
//! Set-up waits out the index's dirty window twice (about 5 s).

use std::fs;
use std::path::Path;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use shardpop::protocol::SitePolicy;
use shardpop::store::index::{DIRTY_WINDOW, INDEX_FILE};
use shardpop::store::{IndexDir, MailPaths, Mailbox, UidlFormat};

/// A Maildir of `count` messages whose index is current and records the
/// Maildir, as after a few logins on a real server.
fn settled(root: &Path, count: u32) -> MailPaths {
    let dir = root.join(format!("m{count}")).join("Maildir");
    for sub in ["cur", "new", "tmp"] {
        fs::create_dir_all(dir.join(sub)).unwrap();
    }
    for n in 0..count {
        let name = format!(
            "{}.M{n}P12345.mail.example.net,S=2048,W=2100:2,S",
            1_700_000_000 + n
        );
        fs::write(dir.join("cur").join(name), b"Subject: x\n\nbody\n").unwrap();
    }
    MailPaths {
        maildir: dir,
        index: IndexDir::Maildir,
    }
}

fn login_open(c: &mut Criterion) {
    let tmp = tempfile::tempdir().unwrap();
    let format = UidlFormat::default();
    let mailboxes: Vec<(u32, MailPaths)> = [10, 780].map(|n| (n, settled(tmp.path(), n))).into();
    // Built, then (past the dirty window) the Maildir recorded.
    for _ in 0..2 {
        std::thread::sleep(DIRTY_WINDOW + Duration::from_millis(200));
        for (_, paths) in &mailboxes {
            drop(Mailbox::open_paths(paths, &format).unwrap());
        }
    }
    let policy = SitePolicy::default();
    let mut group = c.benchmark_group("login_open");
    for (count, paths) in &mailboxes {
        let index = fs::metadata(paths.maildir.join(INDEX_FILE)).unwrap().len();
        assert!(index < 64 << 10, "{count} messages: index of {index} bytes");
        assert!(
            Mailbox::open_now(paths, &format, policy).unwrap().is_some(),
            "{count} messages: not answerable on a shard"
        );
        group.bench_function(format!("shard/{count}"), |b| {
            b.iter(|| Mailbox::open_now(paths, &format, policy).unwrap().unwrap())
        });
        group.bench_function(format!("pool/{count}"), |b| {
            b.iter(|| Mailbox::open_for(paths, &format, policy, 0).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, login_open);
criterion_main!(benches);
