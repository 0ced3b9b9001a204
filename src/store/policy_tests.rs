//! The RFC 2449 rules on the store, without a server: the login-delay
//! check, the expiry decision, the UPDATE with EXPIRE, and the state files
//! with garbage in them.

use super::*;
use crate::protocol::SitePolicy;
use crate::store::{Mailbox, OpenError, UidlFormat, maildir};

const DAY: u64 = 86_400;
const NOW: u64 = 1_800_000_000;

#[test]
fn login_check_table() {
    use LoginCheck::*;
    let table: &[(Option<u64>, u32, u64, LoginCheck)] = &[
        (None, 60, NOW, Allowed),
        (Some(NOW - 10), 0, NOW, Allowed),
        (Some(NOW - 10), 60, NOW, TooSoon { wait_secs: 50 }),
        (Some(NOW - 59), 60, NOW, TooSoon { wait_secs: 1 }),
        (Some(NOW - 60), 60, NOW, Allowed),
        (Some(NOW - 3600), 60, NOW, Allowed),
        (Some(NOW), 60, NOW, TooSoon { wait_secs: 60 }),
        // Another node's clock is ahead by less than the delay: "just now".
        (Some(NOW + 30), 60, NOW, TooSoon { wait_secs: 60 }),
        (Some(NOW + 60), 60, NOW, TooSoon { wait_secs: 60 }),
        // Further ahead: a clock that jumped; never a lock-out.
        (Some(NOW + 61), 60, NOW, Allowed),
        (Some(u64::MAX), 60, NOW, Allowed),
        (Some(0), 60, 0, TooSoon { wait_secs: 60 }),
    ];
    for &(last, delay, now, want) in table {
        assert_eq!(
            login_check(last, delay, now),
            want,
            "{last:?} {delay} {now}"
        );
    }
}

#[test]
fn login_stamp_round_trips_and_garbage_reads_as_none() {
    assert_eq!(parse_login(encode_login(NOW).as_bytes()), Ok(NOW));
    for garbage in [
        &b""[..],
        b"\n",
        b"1800000000\n",
        b"shardpop-pop3-login 1\n",
        b"shardpop-pop3-login 1\n-5\n",
        b"shardpop-pop3-login 1\n+5\n",
        b"shardpop-pop3-login 1\n 5\n",
        b"shardpop-pop3-login 1\n99999999999999999999999\n",
        b"shardpop-pop3-login 2\n5\n",
        b"shardpop-pop3-login 1\n5\nextra\n",
        b"\xff\xfe",
    ] {
        assert!(parse_login(garbage).is_err(), "{garbage:?}");
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    assert_eq!(check_login(dir, 60, NOW), LoginCheck::Allowed);
    record_login(dir, NOW - 5).unwrap();
    assert_eq!(
        check_login(dir, 60, NOW),
        LoginCheck::TooSoon { wait_secs: 55 }
    );
    assert_eq!(check_login(dir, 0, NOW), LoginCheck::Allowed);
    // A corrupt stamp is logged once and allows the login.
    fs::write(dir.join(LOGIN_FILE), b"garbage\x00\n").unwrap();
    assert_eq!(check_login(dir, 60, NOW), LoginCheck::Allowed);
    // No temporary file is left behind.
    record_login(dir, NOW).unwrap();
    let names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, [LOGIN_FILE]);
}

#[test]
fn retrieval_file_round_trips_and_rejects_garbage() {
    let mut times = Retrieved::new();
    times.insert("1700000001.M1.host".into(), NOW - 3 * DAY);
    times.insert("with space.M2".into(), NOW);
    let text = encode_retrieved(&times);
    assert_eq!(
        text,
        format!(
            "shardpop-pop3-retrieved 1\n{} 1700000001.M1.host\n{NOW} with space.M2\n",
            NOW - 3 * DAY
        )
    );
    assert_eq!(parse_retrieved(text.as_bytes()), Ok(times.clone()));
    // A name twice keeps its earlier time.
    let twice = b"shardpop-pop3-retrieved 1\n20 a\n10 a\n30 a\n";
    assert_eq!(parse_retrieved(twice).unwrap()["a"], 10);
    // An empty record list is fine.
    assert!(
        parse_retrieved(b"shardpop-pop3-retrieved 1\n")
            .unwrap()
            .is_empty()
    );
    for garbage in [
        &b""[..],
        b"shardpop-pop3-retrieved 2\n",
        b"1 a\n",
        b"shardpop-pop3-retrieved 1\n1\n",
        b"shardpop-pop3-retrieved 1\nx a\n",
        b"shardpop-pop3-retrieved 1\n1 \n",
        b"shardpop-pop3-retrieved 1\n-1 a\n",
        b"shardpop-pop3-retrieved 1\n\n",
        b"shardpop-pop3-retrieved 1\n1 a\xff\n",
    ] {
        assert!(parse_retrieved(garbage).is_err(), "{garbage:?}");
    }
    // Names that cannot be written on one line are left out.
    let mut odd = Retrieved::new();
    odd.insert("bad\nname".into(), 1);
    odd.insert(String::new(), 1);
    assert_eq!(encode_retrieved(&odd), "shardpop-pop3-retrieved 1\n");
}

#[test]
fn expiry_decision_table() {
    let bases = ["a", "b", "c", "d"];
    let mut times = Retrieved::new();
    times.insert("a".into(), NOW - 3 * DAY); // exactly 3 days ago
    times.insert("b".into(), NOW - 3 * DAY + 1); // just under
    times.insert("c".into(), NOW + DAY); // a clock ahead
    times.insert("gone".into(), 0); // not in the mailbox
    let e = |keep, now| expired(bases.iter().copied(), &times, keep, now);
    assert_eq!(e(3 * DAY, NOW), vec![0]);
    assert_eq!(e(3 * DAY, NOW + 1), vec![0, 1]);
    assert_eq!(e(30 * DAY, NOW), Vec::<usize>::new());
    // EXPIRE 0: everything retrieved, the future stamp too; never "d".
    assert_eq!(e(0, NOW), vec![0, 1, 2]);
}

#[test]
fn user_fields_override_the_site_policy() {
    let site = SitePolicy {
        login_delay_secs: 60,
        expire: Some(Expire::Days(30)),
    };
    let fields = |pairs: &'static [(&'static str, &'static str)]| {
        move |key: &str| pairs.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    };
    assert_eq!(for_user(site, fields(&[])), Ok(site));
    assert_eq!(
        for_user(
            site,
            fields(&[
                ("userdb_pop3_login_delay_secs", "0"),
                ("pop3_expire_days", "never")
            ])
        ),
        Ok(SitePolicy {
            login_delay_secs: 0,
            expire: Some(Expire::Never)
        })
    );
    // The userdb_ form wins, as for userdb_mail.
    assert_eq!(
        for_user(
            SitePolicy::default(),
            fields(&[("pop3_expire_days", "5"), ("userdb_pop3_expire_days", "0")])
        )
        .unwrap()
        .expire,
        Some(Expire::Days(0))
    );
    assert!(for_user(site, fields(&[("pop3_expire_days", "nevr")])).is_err());
    assert!(for_user(site, fields(&[("pop3_login_delay_secs", "-1")])).is_err());
}

/// Opens the Maildir `dir` under `policy` at `now`, as a login does.
fn mailbox(dir: &Path, policy: SitePolicy, now: u64) -> Result<Mailbox, OpenError> {
    Mailbox::open_for(
        &crate::store::MailPaths {
            maildir: dir.to_path_buf(),
            index: crate::store::IndexDir::Memory,
        },
        &UidlFormat::parse("%f").unwrap(),
        policy,
        now,
    )
}

fn deliver(dir: &Path, n: u32) {
    maildir::create(dir).unwrap();
    for i in 1..=n {
        fs::write(
            dir.join("cur")
                .join(format!("{}.M{i}.h:2,", 1_700_000_000 + i)),
            b"x\n",
        )
        .unwrap();
    }
}

fn left(dir: &Path) -> Vec<String> {
    super::commit::cur_names(dir)
}

fn expire(days: u32) -> SitePolicy {
    SitePolicy {
        login_delay_secs: 0,
        expire: Some(Expire::Days(days)),
    }
}

#[test]
fn login_delay_is_enforced_by_open_for_and_stamped_only_on_success() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("Maildir");
    deliver(&dir, 1);
    let policy = SitePolicy {
        login_delay_secs: 60,
        expire: None,
    };
    let first = mailbox(&dir, policy, NOW).unwrap();
    assert_eq!(first.snapshot.policy, Some(policy));
    drop(first);
    match mailbox(&dir, policy, NOW + 20) {
        Err(OpenError::LoginDelay { wait_secs }) => assert_eq!(wait_secs, 40),
        other => panic!("{other:?}"),
    }
    // The refused login did not move the stamp.
    assert!(mailbox(&dir, policy, NOW + 60).is_ok());
    // Without a delay, no stamp is read or written.
    fs::remove_file(dir.join(LOGIN_FILE)).unwrap();
    assert!(mailbox(&dir, SitePolicy::default(), NOW).is_ok());
    assert!(!dir.join(LOGIN_FILE).exists());
}

#[test]
fn expire_n_deletes_at_a_later_session_and_keeps_first_retrieval() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("Maildir");
    deliver(&dir, 3);
    // Session 1: RETR 1 and 2, QUIT.
    let m = mailbox(&dir, expire(3), NOW).unwrap();
    assert_eq!(update(&m.snapshot, &[], &[0, 1], &[], NOW), 0);
    drop(m);
    assert_eq!(left(&dir).len(), 3);
    let times = parse_retrieved(&fs::read(dir.join(RETRIEVED_FILE)).unwrap()).unwrap();
    assert_eq!(times.len(), 2);
    assert!(times.values().all(|&t| t == NOW));
    // Session 2, two days later: RETR 1 again keeps its first time.
    let m = mailbox(&dir, expire(3), NOW + 2 * DAY).unwrap();
    assert_eq!(update(&m.snapshot, &[], &[0], &[], NOW + 2 * DAY), 0);
    drop(m);
    assert_eq!(left(&dir).len(), 3);
    // Session 3, three days after the first RETR: both expire at QUIT,
    // message 3 (never retrieved) stays, and the records go with them.
    let m = mailbox(&dir, expire(3), NOW + 3 * DAY).unwrap();
    assert_eq!(update(&m.snapshot, &[], &[], &[], NOW + 3 * DAY), 0);
    drop(m);
    assert_eq!(left(&dir), ["1700000003.M3.h:2,"]);
    assert!(!dir.join(RETRIEVED_FILE).exists());
}

#[test]
fn expire_zero_deletes_what_the_session_retrieved() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("Maildir");
    deliver(&dir, 3);
    let m = mailbox(&dir, expire(0), NOW).unwrap();
    assert_eq!(update(&m.snapshot, &[2], &[0], &[], NOW), 0);
    drop(m);
    assert_eq!(left(&dir), ["1700000002.M2.h:2,"]);
    assert!(!dir.join(RETRIEVED_FILE).exists());
}

#[test]
fn never_or_absent_deletes_only_what_was_marked() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("Maildir");
    deliver(&dir, 2);
    // Even an old record does nothing under NEVER.
    fs::write(
        dir.join(RETRIEVED_FILE),
        "shardpop-pop3-retrieved 1\n0 1700000001.M1.h\n",
    )
    .unwrap();
    for policy in [
        SitePolicy {
            login_delay_secs: 0,
            expire: Some(Expire::Never),
        },
        SitePolicy::default(),
    ] {
        let m = mailbox(&dir, policy, NOW).unwrap();
        assert_eq!(update(&m.snapshot, &[], &[0, 1], &[], NOW), 0);
    }
    assert_eq!(left(&dir).len(), 2);
    let m = mailbox(&dir, SitePolicy::default(), NOW).unwrap();
    assert_eq!(update(&m.snapshot, &[1], &[], &[], NOW), 0);
    assert_eq!(left(&dir), ["1700000001.M1.h:2,"]);
}

#[test]
fn a_corrupt_retrieval_file_is_empty_and_vanished_records_are_dropped() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("Maildir");
    deliver(&dir, 2);
    fs::write(dir.join(RETRIEVED_FILE), b"\x00\x01 not a file\n").unwrap();
    let m = mailbox(&dir, expire(1), NOW).unwrap();
    // Nothing expires on garbage; the file is rewritten from this session.
    assert_eq!(update(&m.snapshot, &[], &[1], &[], NOW), 0);
    drop(m);
    assert_eq!(left(&dir).len(), 2);
    let times = parse_retrieved(&fs::read(dir.join(RETRIEVED_FILE)).unwrap()).unwrap();
    assert_eq!(times.keys().collect::<Vec<_>>(), ["1700000002.M2.h"]);
    // Someone else removes message 2, and an old record names a message
    // that was never here: both records are dropped at the next QUIT.
    fs::remove_file(dir.join("cur/1700000002.M2.h:2,")).unwrap();
    let mut text = fs::read_to_string(dir.join(RETRIEVED_FILE)).unwrap();
    text.push_str(&format!("{NOW} elsewhere\n"));
    fs::write(dir.join(RETRIEVED_FILE), text).unwrap();
    let m = mailbox(&dir, expire(1), NOW).unwrap();
    assert_eq!(update(&m.snapshot, &[], &[], &[], NOW), 0);
    drop(m);
    assert!(!dir.join(RETRIEVED_FILE).exists());
    // A record survives a flag change by another reader (base name).
    deliver(&dir, 1);
    let m = mailbox(&dir, expire(1), NOW).unwrap();
    assert_eq!(update(&m.snapshot, &[], &[0], &[], NOW), 0);
    drop(m);
    fs::rename(
        dir.join("cur/1700000001.M1.h:2,"),
        dir.join("cur/1700000001.M1.h:2,S"),
    )
    .unwrap();
    let m = mailbox(&dir, expire(1), NOW + DAY).unwrap();
    assert_eq!(update(&m.snapshot, &[], &[], &[], NOW + DAY), 0);
    assert!(left(&dir).is_empty());
}

#[test]
fn the_prefixed_names_are_the_plain_ones_with_userdb() {
    assert_eq!(
        USERDB_LOGIN_DELAY_FIELD,
        format!("userdb_{LOGIN_DELAY_FIELD}")
    );
    assert_eq!(USERDB_EXPIRE_FIELD, format!("userdb_{EXPIRE_FIELD}"));
}

/// Every file under `dir` with its bytes.
fn tree(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(tree(&path));
        } else {
            out.push((path.clone(), fs::read(&path).unwrap()));
        }
    }
    out.sort();
    out
}

/// The engine skips the pool for an update without work: such an update
/// must leave every file as it was, and every update that does something
/// must say it has work.
#[test]
fn an_update_without_work_touches_no_file() {
    let policies = [
        SitePolicy::default(),
        SitePolicy {
            login_delay_secs: 0,
            expire: Some(Expire::Never),
        },
        expire(0),
        expire(3),
    ];
    for policy in policies {
        for deleted in [&[][..], &[0][..]] {
            for retrieved in [&[][..], &[1][..]] {
                let tmp = tempfile::tempdir().unwrap();
                let dir = tmp.path().join("Maildir");
                deliver(&dir, 2);
                // An old record, so EXPIRE n has something to remove.
                fs::write(
                    dir.join(RETRIEVED_FILE),
                    "shardpop-pop3-retrieved 1\n0 1700000002.M2.h\n",
                )
                .unwrap();
                let m = mailbox(&dir, policy, NOW).unwrap();
                let before = tree(&dir);
                let has_work = update_has_work(&m.snapshot, deleted, &[]);
                assert_eq!(
                    has_work,
                    !deleted.is_empty() || matches!(policy.expire, Some(Expire::Days(_))),
                    "{policy:?} {deleted:?}"
                );
                update(&m.snapshot, deleted, retrieved, &[], NOW);
                if !has_work {
                    assert_eq!(tree(&dir), before, "{policy:?} {retrieved:?}");
                } else {
                    assert_ne!(tree(&dir), before, "{policy:?} {deleted:?} {retrieved:?}");
                }
            }
        }
    }
}
