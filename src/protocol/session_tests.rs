//! RFC 1939 / 2449 / 5034 behaviour as in-memory transcripts: client lines in,
//! server bytes and effects out, no socket.

use super::*;
use crate::protocol::Expire;

/// An in-memory maildrop: (octets, uidl) per message.
struct MemDrop(Vec<(u64, &'static str)>);

/// A [`MemDrop`] whose owner may have their own RFC 2449 policy, and whose
/// messages may already be \Seen.
struct OwnedDrop {
    records: MemDrop,
    policy: Option<SitePolicy>,
    seen: fn(usize) -> bool,
}

impl Maildrop for OwnedDrop {
    fn count(&self) -> usize {
        self.records.count()
    }
    fn octets(&self, index: usize) -> u64 {
        self.records.octets(index)
    }
    fn uidl(&self, index: usize) -> &[u8] {
        self.records.uidl(index)
    }
    fn policy(&self) -> Option<SitePolicy> {
        self.policy
    }
    fn seen(&self, index: usize) -> bool {
        (self.seen)(index)
    }
}

impl Maildrop for MemDrop {
    fn count(&self) -> usize {
        self.0.len()
    }
    fn octets(&self, index: usize) -> u64 {
        self.0[index].0
    }
    fn uidl(&self, index: usize) -> &[u8] {
        self.0[index].1.as_bytes()
    }
}

fn drop3() -> Box<dyn Maildrop> {
    Box::new(MemDrop(vec![(120, "uid-a"), (200, "uid-b"), (5, "uid-c")]))
}

fn offer() -> Offer {
    Offer {
        plaintext_auth: true,
        stls: false,
        oauth: false,
    }
}

fn new_session() -> Session {
    Session::new(Limits::default(), offer(), None)
}

/// Feeds `input` whole; returns the output and the effect.
fn feed(s: &mut Session, input: &str) -> (String, Option<Effect>) {
    let mut out = Vec::new();
    let step = s.handle_input(input.as_bytes(), &mut out);
    (String::from_utf8(out).unwrap(), step.effect)
}

fn say(s: &mut Session, input: &str) -> String {
    let (out, effect) = feed(s, input);
    assert!(
        effect.is_none(),
        "unexpected effect {effect:?} for {input:?}"
    );
    out
}

/// A session logged in on `drop3()`.
fn logged_in() -> Session {
    let mut s = new_session();
    assert_eq!(say(&mut s, "USER alice\r\n"), "+OK\r\n");
    let (out, effect) = feed(&mut s, "PASS secret\r\n");
    assert_eq!(out, "");
    match effect {
        Some(Effect::Login {
            user,
            credential: Credential::Password(p),
        }) => {
            assert_eq!(
                (user.as_slice(), p.as_slice()),
                (&b"alice"[..], &b"secret"[..])
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(s.is_waiting());
    let mut out = Vec::new();
    assert!(
        s.complete(Completion::LoggedIn(drop3()), &mut out)
            .is_none()
    );
    assert_eq!(out, b"+OK Logged in.\r\n");
    assert!(s.is_authorized() && !s.is_waiting());
    s
}

#[test]
fn greeting_with_and_without_apop() {
    let mut out = Vec::new();
    new_session().greet(&mut out);
    assert_eq!(out, b"+OK shardpop ready.\r\n");
    out.clear();
    Session::new(Limits::default(), offer(), Some("<1.2@host>".into())).greet(&mut out);
    assert_eq!(out, b"+OK shardpop ready. <1.2@host>\r\n");
}

#[test]
fn authorization_state_refuses_transaction_commands() {
    for cmd in [
        "STAT", "LIST", "LIST 1", "RETR 1", "DELE 1", "NOOP", "RSET", "TOP 1 1", "UIDL", "UIDL 1",
    ] {
        let mut s = new_session();
        let out = say(&mut s, &format!("{cmd}\r\n"));
        assert_eq!(out, "-ERR Command not valid in this state.\r\n", "{cmd}");
    }
}

#[test]
fn transaction_state_refuses_authorization_commands() {
    for cmd in ["USER bob", "PASS x", "APOP bob 0123", "AUTH PLAIN", "STLS"] {
        let mut s = logged_in();
        let out = say(&mut s, &format!("{cmd}\r\n"));
        assert_eq!(out, "-ERR Command not valid in this state.\r\n", "{cmd}");
    }
}

#[test]
fn pass_without_user_is_refused() {
    let mut s = new_session();
    assert_eq!(say(&mut s, "PASS x\r\n"), "-ERR No username given.\r\n");
}

#[test]
fn failed_logins_give_rfc3206_codes_and_allow_retry() {
    for (why, text) in [
        (
            LoginFailure::BadCredentials,
            "-ERR [AUTH] Authentication failed.\r\n",
        ),
        (
            LoginFailure::InUse,
            "-ERR [IN-USE] Mailbox is locked by another POP3 session.\r\n",
        ),
        (
            LoginFailure::Temporary,
            "-ERR [SYS/TEMP] Temporary server failure, try again later.\r\n",
        ),
        (
            LoginFailure::LoginDelay,
            "-ERR [LOGIN-DELAY] Minimum time between logins has not passed, try again later.\r\n",
        ),
    ] {
        let mut s = new_session();
        say(&mut s, "USER a\r\n");
        assert!(feed(&mut s, "PASS b\r\n").1.is_some());
        let mut out = Vec::new();
        assert!(s.complete(Completion::LoginFailed(why), &mut out).is_none());
        assert_eq!(String::from_utf8(out).unwrap(), text);
        assert!(!s.is_authorized());
        // The USER must be given again.
        assert_eq!(say(&mut s, "PASS b\r\n"), "-ERR No username given.\r\n");
    }
}

#[test]
fn input_waits_while_login_is_out() {
    let mut s = new_session();
    let mut out = Vec::new();
    let step = s.handle_input(b"USER a\r\nPASS b\r\nSTAT\r\n", &mut out);
    assert!(matches!(step.effect, Some(Effect::Login { .. })));
    assert_eq!(step.consumed, 16, "STAT must stay in the buffer");
    assert!(s.is_waiting());
    let step = s.handle_input(b"STAT\r\n", &mut out);
    assert_eq!(step.consumed, 0);
    s.complete(Completion::LoggedIn(drop3()), &mut out);
    out.clear();
    let step = s.handle_input(b"STAT\r\n", &mut out);
    assert_eq!(step.consumed, 6);
    assert_eq!(out, b"+OK 3 325\r\n");
}

#[test]
fn stat_list_uidl() {
    let mut s = logged_in();
    assert_eq!(say(&mut s, "STAT\r\n"), "+OK 3 325\r\n");
    assert_eq!(
        say(&mut s, "LIST\r\n"),
        "+OK 3 messages (325 octets)\r\n1 120\r\n2 200\r\n3 5\r\n.\r\n"
    );
    assert_eq!(say(&mut s, "LIST 2\r\n"), "+OK 2 200\r\n");
    assert_eq!(
        say(&mut s, "UIDL\r\n"),
        "+OK\r\n1 uid-a\r\n2 uid-b\r\n3 uid-c\r\n.\r\n"
    );
    assert_eq!(say(&mut s, "UIDL 3\r\n"), "+OK 3 uid-c\r\n");
}

#[test]
fn message_numbers_out_of_range() {
    let mut s = logged_in();
    for cmd in [
        "LIST 0",
        "LIST 4",
        "UIDL 0",
        "RETR 4",
        "DELE 0",
        "TOP 9 1",
        "RETR 4294967295",
    ] {
        let out = say(&mut s, &format!("{cmd}\r\n"));
        assert!(out.starts_with("-ERR There's no message "), "{cmd}: {out}");
    }
    for cmd in [
        "RETR -1",
        "DELE 99999999999999999999999",
        "LIST x",
        "TOP 1 -1",
    ] {
        let out = say(&mut s, &format!("{cmd}\r\n"));
        assert!(out.starts_with("-ERR "), "{cmd}: {out}");
    }
    assert_eq!(
        say(&mut s, "STAT\r\n"),
        "+OK 3 325\r\n",
        "still in TRANSACTION"
    );
}

#[test]
fn retr_and_top_ask_for_the_body() {
    let mut s = logged_in();
    let (out, effect) = feed(&mut s, "RETR 2\r\n");
    assert_eq!(out, "");
    assert!(matches!(
        effect,
        Some(Effect::SendBody {
            index: 1,
            top_lines: None
        })
    ));
    assert!(s.is_waiting());
    let mut out = Vec::new();
    s.body_ready(Ok(()), &mut out);
    assert_eq!(out, b"+OK 200 octets\r\n");
    assert!(s.is_waiting(), "input waits until the body is out");
    s.body_sent();
    let (_, effect) = feed(&mut s, "TOP 1 0\r\n");
    assert!(matches!(
        effect,
        Some(Effect::SendBody {
            index: 0,
            top_lines: Some(0)
        })
    ));
    out.clear();
    s.body_ready(Ok(()), &mut out);
    assert_eq!(out, b"+OK\r\n");
    s.body_sent();
    assert_eq!(s.summary().bodies_sent, 2);
}

#[test]
fn a_body_that_cannot_be_opened_is_an_err_and_input_resumes() {
    let mut s = logged_in();
    for (why, text) in [
        (
            BodyError::Vanished,
            "-ERR Message was removed by another process.\r\n",
        ),
        (
            BodyError::Temporary,
            "-ERR [SYS/TEMP] Temporary server failure, try again later.\r\n",
        ),
    ] {
        assert!(feed(&mut s, "RETR 1\r\n").1.is_some());
        let mut out = Vec::new();
        s.body_ready(Err(why), &mut out);
        assert_eq!(String::from_utf8(out).unwrap(), text);
        assert!(!s.is_waiting());
        assert_eq!(say(&mut s, "STAT\r\n"), "+OK 3 325\r\n");
    }
    assert_eq!(s.summary().bodies_sent, 0);
}

#[test]
fn dele_hides_the_message_and_rset_restores_it() {
    let mut s = logged_in();
    assert_eq!(say(&mut s, "DELE 1\r\n"), "+OK Marked to be deleted.\r\n");
    assert_eq!(say(&mut s, "DELE 1\r\n"), "-ERR Message is deleted.\r\n");
    assert_eq!(say(&mut s, "RETR 1\r\n"), "-ERR Message is deleted.\r\n");
    assert_eq!(say(&mut s, "TOP 1 1\r\n"), "-ERR Message is deleted.\r\n");
    assert_eq!(say(&mut s, "LIST 1\r\n"), "-ERR Message is deleted.\r\n");
    assert_eq!(say(&mut s, "UIDL 1\r\n"), "-ERR Message is deleted.\r\n");
    assert_eq!(say(&mut s, "STAT\r\n"), "+OK 2 205\r\n");
    assert_eq!(
        say(&mut s, "LIST\r\n"),
        "+OK 2 messages (205 octets)\r\n2 200\r\n3 5\r\n.\r\n"
    );
    assert_eq!(
        say(&mut s, "UIDL\r\n"),
        "+OK\r\n2 uid-b\r\n3 uid-c\r\n.\r\n"
    );
    assert_eq!(
        say(&mut s, "RSET\r\n"),
        "+OK maildrop has 3 messages (325 octets)\r\n"
    );
    assert_eq!(say(&mut s, "STAT\r\n"), "+OK 3 325\r\n");
}

#[test]
fn quit_without_deletions_closes_at_once() {
    let mut s = logged_in();
    let (out, effect) = feed(&mut s, "QUIT\r\n");
    assert_eq!(out, "+OK Logging out.\r\n");
    assert!(matches!(effect, Some(Effect::Close)));
    assert!(s.is_closed());
    assert!(s.quit_answered(), "the engine may close without lingering");
}

#[test]
fn quit_in_authorization_is_answered_too() {
    let mut s = new_session();
    assert!(!s.quit_answered());
    let (out, effect) = feed(&mut s, "QUIT\r\n");
    assert_eq!(out, "+OK Logging out.\r\n");
    assert!(matches!(effect, Some(Effect::Close)));
    assert!(s.quit_answered());
}

#[test]
fn quit_commits_exactly_the_marked_messages() {
    let mut s = logged_in();
    say(&mut s, "DELE 3\r\nDELE 1\r\n");
    let (out, effect) = feed(&mut s, "QUIT\r\n");
    assert_eq!(out, "");
    match effect {
        Some(Effect::Commit(update)) => assert_eq!(
            update,
            Update {
                deleted: vec![0, 2],
                retrieved: vec![],
                seen: vec![]
            }
        ),
        other => panic!("{other:?}"),
    }
    let mut out = Vec::new();
    assert!(matches!(
        s.complete(Completion::Committed(true), &mut out),
        Some(Effect::Close)
    ));
    assert_eq!(out, b"+OK Logging out, messages deleted.\r\n");
    assert_eq!(s.summary().deleted, 2);
    assert!(s.quit_answered());
}

#[test]
fn failed_commit_is_reported() {
    let mut s = logged_in();
    say(&mut s, "DELE 2\r\n");
    assert!(matches!(
        feed(&mut s, "QUIT\r\n").1,
        Some(Effect::Commit(_))
    ));
    let mut out = Vec::new();
    s.complete(Completion::Committed(false), &mut out);
    assert!(out.starts_with(b"-ERR [SYS/TEMP]"));
    assert!(s.is_closed());
}

#[test]
fn rset_then_quit_deletes_nothing() {
    let mut s = logged_in();
    say(&mut s, "DELE 2\r\nRSET\r\n");
    assert!(matches!(feed(&mut s, "QUIT\r\n").1, Some(Effect::Close)));
}

#[test]
fn quit_in_authorization_deletes_nothing() {
    let mut s = new_session();
    let (out, effect) = feed(&mut s, "QUIT\r\n");
    assert_eq!(out, "+OK Logging out.\r\n");
    assert!(matches!(effect, Some(Effect::Close)));
}

#[test]
fn noop_and_capa_in_both_states() {
    let mut s = new_session();
    let capa = say(&mut s, "CAPA\r\n");
    assert!(capa.contains("\r\nUSER\r\n") && capa.contains("\r\nPIPELINING\r\n"));
    let mut s = logged_in();
    assert_eq!(say(&mut s, "NOOP\r\n"), "+OK\r\n");
    let capa = say(&mut s, "CAPA\r\n");
    assert!(capa.contains("\r\nUIDL\r\n") && !capa.contains("USER"));
}

#[test]
fn pipelined_commands_answer_in_order_in_one_call() {
    let mut s = logged_in();
    let out = say(
        &mut s,
        "STAT\r\nLIST 1\r\nUIDL 2\r\nNOOP\r\nDELE 3\r\nSTAT\r\n",
    );
    assert_eq!(
        out,
        "+OK 3 325\r\n+OK 1 120\r\n+OK 2 uid-b\r\n+OK\r\n+OK Marked to be deleted.\r\n+OK 2 320\r\n"
    );
}

#[test]
fn pipelining_stops_at_a_body_and_resumes_after() {
    let mut s = logged_in();
    let input = b"RETR 1\r\nSTAT\r\n";
    let mut out = Vec::new();
    let step = s.handle_input(input, &mut out);
    assert!(matches!(step.effect, Some(Effect::SendBody { .. })));
    assert_eq!(step.consumed, 8);
    s.body_sent();
    out.clear();
    let step = s.handle_input(&input[8..], &mut out);
    assert_eq!((step.consumed, out.as_slice()), (6, &b"+OK 3 325\r\n"[..]));
}

#[test]
fn commands_split_at_every_byte_give_the_same_transcript() {
    let script = b"USER alice\r\nPASS secret\r\n";
    for split in 0..=script.len() {
        let mut s = new_session();
        let mut out = Vec::new();
        let mut buf = script[..split].to_vec();
        let step = s.handle_input(&buf, &mut out);
        buf.drain(..step.consumed);
        assert!(step.effect.is_none() || split == script.len());
        buf.extend_from_slice(&script[split..]);
        if step.effect.is_none() {
            let step = s.handle_input(&buf, &mut out);
            assert!(
                matches!(step.effect, Some(Effect::Login { .. })),
                "split {split}"
            );
        }
        assert_eq!(out, b"+OK\r\n");
    }
}

#[test]
fn overlong_line_is_refused_and_the_rest_discarded() {
    let mut s = logged_in();
    let mut out = Vec::new();
    // 100 KB arriving in pieces, then a good command.
    let junk = vec![b'X'; 4096];
    let mut errs = 0;
    for _ in 0..25 {
        let step = s.handle_input(&junk, &mut out);
        assert_eq!(step.consumed, junk.len(), "nothing is buffered");
    }
    errs += String::from_utf8_lossy(&out)
        .matches("-ERR Line too long.")
        .count();
    assert_eq!(errs, 1, "one error per line, not per chunk");
    out.clear();
    let step = s.handle_input(b"XX\r\nSTAT\r\n", &mut out);
    assert_eq!(step.consumed, 10);
    assert_eq!(out, b"+OK 3 325\r\n");
}

#[test]
fn binary_garbage_and_nul_get_err() {
    let mut s = logged_in();
    let out = say(&mut s, "\u{0}\u{1}\u{2}\r\nST\u{0}T\r\n\u{ff}\u{fe}\r\n");
    assert_eq!(out.matches("-ERR").count(), 3, "{out:?}");
    assert_eq!(say(&mut s, "STAT\r\n"), "+OK 3 325\r\n");
}

#[test]
fn bare_lf_commands_are_accepted() {
    let mut s = logged_in();
    assert_eq!(say(&mut s, "STAT\nNOOP\n"), "+OK 3 325\r\n+OK\r\n");
}

#[test]
fn too_many_bad_commands_close_the_session() {
    let limits = Limits {
        bad_commands_max: 3,
        ..Limits::default()
    };
    let mut s = Session::new(limits, offer(), None);
    let (out, effect) = feed(&mut s, "A\r\nB\r\nC\r\nD\r\n");
    assert_eq!(out.matches("-ERR").count(), 3);
    assert!(out.ends_with("-ERR Too many bad commands, closing.\r\n"));
    assert!(matches!(effect, Some(Effect::Close)));
    assert!(s.is_closed());
    // Closed for misbehaving, not by QUIT: the engine lingers, so the
    // client still reads this line while it keeps sending.
    assert!(!s.quit_answered());
}

#[test]
fn large_listing_respects_the_high_water_mark() {
    let many: Vec<(u64, &'static str)> = (0..10_000)
        .map(|_| (1234, "uid-zzzzzzzzzzzzzzzzzzzzzzz"))
        .collect();
    let limits = Limits {
        output_high_water_bytes: 4096,
        ..Limits::default()
    };
    let mut s = Session::new(limits, offer(), None);
    say(&mut s, "USER a\r\n");
    feed(&mut s, "PASS b\r\n");
    let mut out = Vec::new();
    s.complete(Completion::LoggedIn(Box::new(MemDrop(many))), &mut out);
    out.clear();
    let step = s.handle_input(b"UIDL\r\nNOOP\r\n", &mut out);
    assert_eq!(step.consumed, 6, "NOOP waits behind the listing");
    assert!(s.has_pending_output());
    assert!(out.len() < 4096 + 64);
    let mut all = std::mem::take(&mut out);
    let mut rounds = 0;
    while s.has_pending_output() {
        s.continue_output(&mut out);
        assert!(out.len() < 4096 + 64);
        all.append(&mut out);
        rounds += 1;
    }
    assert!(rounds > 10);
    let text = String::from_utf8(all).unwrap();
    assert_eq!(text.lines().count(), 10_002);
    assert!(text.ends_with("10000 uid-zzzzzzzzzzzzzzzzzzzzzzz\r\n.\r\n"));
    let step = s.handle_input(b"NOOP\r\n", &mut out);
    assert_eq!((step.consumed, out.as_slice()), (6, &b"+OK\r\n"[..]));
}

#[test]
fn apop_gives_a_login_effect_only_when_enabled() {
    let mut s = new_session();
    assert_eq!(
        say(&mut s, "APOP bob c4c9334bac560ecc979e58001b3e22fb\r\n"),
        "-ERR APOP is not enabled.\r\n"
    );
    let mut s = Session::new(
        Limits::default(),
        offer(),
        Some("<1896.697170952@dbc.mtview.ca.us>".into()),
    );
    match feed(&mut s, "APOP mrose c4c9334bac560ecc979e58001b3e22fb\r\n").1 {
        Some(Effect::Login {
            user,
            credential: Credential::Apop { challenge, digest },
        }) => {
            assert_eq!(user, b"mrose");
            assert_eq!(&*challenge, "<1896.697170952@dbc.mtview.ca.us>");
            assert_eq!(digest, b"c4c9334bac560ecc979e58001b3e22fb");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn sasl_plain_with_initial_response_and_continuation() {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(b"\0alice\0pw d");
    let mut s = new_session();
    match feed(&mut s, &format!("AUTH PLAIN {b64}\r\n")).1 {
        Some(Effect::Login {
            user,
            credential: Credential::Password(p),
        }) => {
            assert_eq!(
                (user.as_slice(), p.as_slice()),
                (&b"alice"[..], &b"pw d"[..])
            );
        }
        other => panic!("{other:?}"),
    }
    let mut s = new_session();
    assert_eq!(say(&mut s, "AUTH PLAIN\r\n"), "+ \r\n");
    assert!(matches!(
        feed(&mut s, &format!("{b64}\r\n")).1,
        Some(Effect::Login { .. })
    ));
}

#[test]
fn sasl_cancel_bad_base64_and_unknown_mechanism() {
    let mut s = new_session();
    assert_eq!(
        say(&mut s, "AUTH PLAIN\r\n*\r\n"),
        "+ \r\n-ERR Authentication cancelled.\r\n"
    );
    assert_eq!(
        say(&mut s, "AUTH PLAIN !!!\r\n"),
        "-ERR Invalid base64 data.\r\n"
    );
    assert_eq!(
        say(&mut s, "AUTH CRAM-MD5\r\n"),
        "-ERR Unsupported authentication mechanism.\r\n"
    );
    assert_eq!(
        say(&mut s, "AUTH\r\n"),
        "+OK\r\nPLAIN\r\nSCRAM-SHA-256\r\n.\r\n"
    );
    // The session is still usable.
    assert_eq!(say(&mut s, "USER x\r\n"), "+OK\r\n");
}

#[test]
fn plaintext_auth_can_be_refused_per_connection() {
    let mut s = Session::new(
        Limits::default(),
        Offer {
            plaintext_auth: false,
            stls: true,
            oauth: false,
        },
        None,
    );
    for cmd in ["USER a", "PASS b", "AUTH PLAIN"] {
        let out = say(&mut s, &format!("{cmd}\r\n"));
        assert!(
            out.starts_with("-ERR [AUTH] Plaintext authentication disallowed"),
            "{cmd}: {out}"
        );
    }
}

#[test]
fn abort_writes_one_last_line() {
    let mut s = logged_in();
    let mut out = Vec::new();
    s.abort(&mut out, reply::text::TIMEOUT);
    s.abort(&mut out, reply::text::TIMEOUT);
    assert_eq!(out, b"-ERR Disconnected for inactivity.\r\n");
    assert!(s.is_closed());
    assert_eq!(s.handle_input(b"STAT\r\n", &mut out).consumed, 0);
}

#[test]
fn debug_of_effects_redacts_passwords() {
    let mut s = new_session();
    say(&mut s, "USER a\r\n");
    let (_, effect) = feed(&mut s, "PASS hunter2\r\n");
    let shown = format!("{effect:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
}

#[test]
fn too_many_commands_before_login_close_the_session() {
    let limits = Limits {
        commands_before_login_max: 4,
        ..Limits::default()
    };
    let mut s = Session::new(limits, offer(), None);
    let (out, effect) = feed(&mut s, "CAPA\r\nUSER a\r\nUSER b\r\nUSER c\r\nUSER d\r\n");
    assert!(
        out.ends_with("+OK\r\n-ERR Too many commands before login, closing.\r\n"),
        "{out}"
    );
    assert!(matches!(effect, Some(Effect::Close)));
    // After login the count no longer applies.
    let mut s = Session::new(limits, offer(), None);
    say(&mut s, "USER a\r\n");
    feed(&mut s, "PASS b\r\n");
    let mut out = Vec::new();
    s.complete(Completion::LoggedIn(drop3()), &mut out);
    assert_eq!(say(&mut s, &"NOOP\r\n".repeat(10)), "+OK\r\n".repeat(10));
}

#[test]
fn nothing_is_answered_while_update_runs() {
    let mut s = logged_in();
    say(&mut s, "DELE 1\r\n");
    let mut out = Vec::new();
    let step = s.handle_input(b"QUIT\r\nSTAT\r\nNOOP\r\n", &mut out);
    assert!(matches!(step.effect, Some(Effect::Commit(_))));
    assert_eq!(step.consumed, 6);
    let step = s.handle_input(b"STAT\r\nNOOP\r\n", &mut out);
    assert_eq!(
        (step.consumed, out.len()),
        (0, 0),
        "UPDATE answers nothing but QUIT's result"
    );
    assert!(s.is_authorized() && s.is_waiting());
}

#[test]
fn stls_when_offered_then_state_is_forgotten_and_capa_changes() {
    let mut s = Session::new(
        Limits::default(),
        Offer {
            plaintext_auth: false,
            stls: true,
            oauth: false,
        },
        None,
    );
    let capa = say(&mut s, "CAPA\r\n");
    assert!(
        capa.contains("\r\nSTLS\r\n") && !capa.contains("USER"),
        "{capa}"
    );
    assert!(say(&mut s, "USER a\r\n").starts_with("-ERR [AUTH]"));
    let (out, effect) = feed(&mut s, "STLS\r\n");
    assert_eq!(out, "+OK Begin TLS negotiation now.\r\n");
    assert!(matches!(effect, Some(Effect::StartTls)));
    s.tls_started(Offer {
        plaintext_auth: true,
        stls: false,
        oauth: false,
    });
    let capa = say(&mut s, "CAPA\r\n");
    assert!(
        !capa.contains("STLS") && capa.contains("\r\nUSER\r\n") && capa.contains("SASL PLAIN"),
        "{capa}"
    );
    assert_eq!(say(&mut s, "STLS\r\n"), "-ERR TLS is not available.\r\n");
    assert_eq!(say(&mut s, "PASS x\r\n"), "-ERR No username given.\r\n");
    say(&mut s, "USER a\r\n");
    assert!(matches!(
        feed(&mut s, "PASS b\r\n").1,
        Some(Effect::Login { .. })
    ));
}

#[test]
fn nothing_is_read_while_tls_starts() {
    let mut s = Session::new(
        Limits::default(),
        Offer {
            plaintext_auth: true,
            stls: true,
            oauth: false,
        },
        None,
    );
    // STLS and an injected command in one input: only STLS is consumed.
    let mut out = Vec::new();
    let step = s.handle_input(b"STLS\r\nUSER evil\r\n", &mut out);
    assert_eq!(step.consumed, b"STLS\r\n".len());
    assert!(matches!(step.effect, Some(Effect::StartTls)));
    assert!(s.is_starting_tls());
    // Whatever arrives before TLS is on is not a command: no output, no
    // effect, nothing consumed, however often it is offered.
    for input in ["USER evil\r\n", "QUIT\r\n", "CAPA\r\n", "garbage"] {
        let mut out = Vec::new();
        let step = s.handle_input(input.as_bytes(), &mut out);
        assert_eq!((step.consumed, out.len()), (0, 0), "{input:?}");
        assert!(step.effect.is_none());
    }
    s.tls_started(Offer {
        plaintext_auth: true,
        stls: false,
        oauth: false,
    });
    assert!(!s.is_starting_tls());
    assert_eq!(say(&mut s, "PASS x\r\n"), "-ERR No username given.\r\n");
}

#[test]
fn a_user_given_before_stls_is_forgotten() {
    let mut s = Session::new(
        Limits::default(),
        Offer {
            plaintext_auth: true,
            stls: true,
            oauth: false,
        },
        None,
    );
    say(&mut s, "USER early\r\n");
    assert!(matches!(feed(&mut s, "STLS\r\n").1, Some(Effect::StartTls)));
    s.tls_started(Offer {
        plaintext_auth: true,
        stls: false,
        oauth: false,
    });
    assert_eq!(say(&mut s, "PASS x\r\n"), "-ERR No username given.\r\n");
}

#[test]
fn scram_frames_each_step_through_the_engine() {
    let mut s = new_session();
    assert_eq!(say(&mut s, "AUTH SCRAM-SHA-256\r\n"), "+ \r\n");
    // client-first: "n,,n=u,r=abc" in base64
    match feed(&mut s, "bixuPXUscj1hYmM=\r\n").1 {
        Some(Effect::Sasl { first: true, data }) => assert_eq!(data, b"n,n=u,r=abc"),
        other => panic!("{other:?}"),
    }
    assert!(s.is_waiting());
    let mut out = Vec::new();
    assert!(
        s.complete(
            Completion::SaslChallenge(b"r=abcdef,s=c2FsdA==,i=4096".to_vec()),
            &mut out
        )
        .is_none()
    );
    assert_eq!(out, b"+ cj1hYmNkZWYscz1jMkZzZEE9PSxpPTQwOTY=\r\n");
    match feed(&mut s, "eA==\r\n").1 {
        Some(Effect::Sasl { first: false, data }) => assert_eq!(data, b"x"),
        other => panic!("{other:?}"),
    }
    out.clear();
    s.complete(Completion::SaslChallenge(b"v=sig".to_vec()), &mut out);
    assert_eq!(out, b"+ dj1zaWc=\r\n");
    // The empty answer to server-final.
    match feed(&mut s, "\r\n").1 {
        Some(Effect::Sasl { first: false, data }) => assert!(data.is_empty()),
        other => panic!("{other:?}"),
    }
    out.clear();
    s.complete(Completion::LoggedIn(drop3()), &mut out);
    assert_eq!(out, b"+OK Logged in.\r\n");
}

#[test]
fn scram_failure_and_cancel_end_the_exchange() {
    let mut s = new_session();
    assert!(matches!(
        feed(&mut s, "AUTH SCRAM-SHA-256 bixuPXUscj1hYmM=\r\n").1,
        Some(Effect::Sasl { first: true, .. })
    ));
    let mut out = Vec::new();
    s.complete(
        Completion::LoginFailed(LoginFailure::BadCredentials),
        &mut out,
    );
    assert_eq!(out, b"-ERR [AUTH] Authentication failed.\r\n");
    assert_eq!(
        say(&mut s, "USER a\r\n"),
        "+OK\r\n",
        "back to commands, not SASL responses"
    );
    assert_eq!(
        say(&mut s, "AUTH SCRAM-SHA-256\r\n*\r\n"),
        "+ \r\n-ERR Authentication cancelled.\r\n"
    );
    // SCRAM is offered even where plaintext logins are not.
    let mut s = Session::new(
        Limits::default(),
        Offer {
            plaintext_auth: false,
            stls: false,
            oauth: false,
        },
        None,
    );
    assert!(say(&mut s, "CAPA\r\n").contains("\r\nSASL SCRAM-SHA-256\r\n"));
    assert_eq!(say(&mut s, "AUTH SCRAM-SHA-256\r\n"), "+ \r\n");
}

// RFC 2449 §6.5 / §6.7: LOGIN-DELAY and EXPIRE.

fn site() -> SitePolicy {
    SitePolicy {
        login_delay_secs: 300,
        expire: Some(Expire::Days(30)),
    }
}

/// A session under the site policy `site()`, logged in as a user whose own
/// policy is `user` (`None`: the site's).
fn logged_in_with(user: Option<SitePolicy>) -> Session {
    let limits = Limits {
        policy: site(),
        ..Limits::default()
    };
    let mut s = Session::new(limits, offer(), None);
    say(&mut s, "USER alice\r\n");
    assert!(feed(&mut s, "PASS secret\r\n").1.is_some());
    let records = MemDrop(vec![(120, "uid-a"), (200, "uid-b"), (5, "uid-c")]);
    let maildrop: Box<dyn Maildrop> = match user {
        Some(policy) => Box::new(OwnedDrop {
            records,
            policy: Some(policy),
            seen: |_| true,
        }),
        None => Box::new(records),
    };
    let mut out = Vec::new();
    assert!(
        s.complete(Completion::LoggedIn(maildrop), &mut out)
            .is_none()
    );
    s
}

/// Sends RETR n and plays the engine: body opened, streamed, sent.
fn retr(s: &mut Session, n: u32) {
    let (_, effect) = feed(s, &format!("RETR {n}\r\n"));
    assert!(matches!(
        effect,
        Some(Effect::SendBody {
            top_lines: None,
            ..
        })
    ));
    let mut out = Vec::new();
    s.body_ready(Ok(()), &mut out);
    s.body_sent();
}

#[test]
fn capa_shows_the_site_policy_before_login_and_the_users_after() {
    let limits = Limits {
        policy: site(),
        ..Limits::default()
    };
    let mut s = Session::new(limits, offer(), None);
    let before = say(&mut s, "CAPA\r\n");
    assert!(before.contains("\r\nLOGIN-DELAY 300 USER\r\n"), "{before}");
    assert!(before.contains("\r\nEXPIRE 30 USER\r\n"), "{before}");

    let mut s = logged_in_with(Some(SitePolicy {
        login_delay_secs: 900,
        expire: Some(Expire::Never),
    }));
    let after = say(&mut s, "CAPA\r\n");
    assert!(after.contains("\r\nLOGIN-DELAY 900\r\n"), "{after}");
    assert!(after.contains("\r\nEXPIRE NEVER\r\n"), "{after}");
    assert!(!after.contains(" USER\r\n"), "{after}");

    // A maildrop without its own policy: the site's, without USER.
    let mut s = logged_in_with(None);
    let after = say(&mut s, "CAPA\r\n");
    assert!(
        after.contains("\r\nLOGIN-DELAY 300\r\nEXPIRE 30\r\n"),
        "{after}"
    );
}

#[test]
fn quit_with_expire_always_updates_and_reports_retrievals() {
    let mut s = logged_in_with(None);
    retr(&mut s, 2);
    retr(&mut s, 1);
    // TOP is not a retrieval.
    assert!(matches!(
        feed(&mut s, "TOP 3 0\r\n").1,
        Some(Effect::SendBody {
            top_lines: Some(0),
            ..
        })
    ));
    let mut out = Vec::new();
    s.body_ready(Ok(()), &mut out);
    s.body_sent();
    say(&mut s, "DELE 1\r\n");
    match feed(&mut s, "QUIT\r\n").1 {
        Some(Effect::Commit(update)) => assert_eq!(
            update,
            Update {
                deleted: vec![0],
                retrieved: vec![1],
                seen: vec![]
            }
        ),
        other => panic!("{other:?}"),
    }

    // Nothing retrieved or marked: UPDATE still runs (older retrievals may
    // have expired), and says only that it logged out.
    let mut s = logged_in_with(None);
    match feed(&mut s, "QUIT\r\n").1 {
        Some(Effect::Commit(update)) => assert_eq!(update, Update::default()),
        other => panic!("{other:?}"),
    }
    let mut out = Vec::new();
    s.complete(Completion::Committed(true), &mut out);
    assert_eq!(out, b"+OK Logging out.\r\n");
}

#[test]
fn expire_zero_reports_what_this_session_retrieved() {
    let mut s = logged_in_with(Some(SitePolicy {
        login_delay_secs: 0,
        expire: Some(Expire::Days(0)),
    }));
    retr(&mut s, 3);
    match feed(&mut s, "QUIT\r\n").1 {
        Some(Effect::Commit(update)) => assert_eq!(update.retrieved, vec![2]),
        other => panic!("{other:?}"),
    }
}

#[test]
fn expire_never_or_absent_quits_without_update_and_records_nothing() {
    for policy in [
        SitePolicy {
            login_delay_secs: 60,
            expire: Some(Expire::Never),
        },
        SitePolicy::default(),
    ] {
        let mut s = logged_in_with(Some(policy));
        retr(&mut s, 1);
        let (out, effect) = feed(&mut s, "QUIT\r\n");
        assert_eq!(out, "+OK Logging out.\r\n");
        assert!(matches!(effect, Some(Effect::Close)), "{policy:?}");
        // With a DELE, UPDATE runs but no retrieval is recorded.
        let mut s = logged_in_with(Some(policy));
        retr(&mut s, 1);
        say(&mut s, "DELE 2\r\n");
        match feed(&mut s, "QUIT\r\n").1 {
            Some(Effect::Commit(update)) => assert_eq!(
                update,
                Update {
                    deleted: vec![1],
                    retrieved: vec![],
                    seen: vec![]
                }
            ),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn a_failed_retr_is_not_a_retrieval() {
    let mut s = logged_in_with(None);
    assert!(feed(&mut s, "RETR 1\r\n").1.is_some());
    let mut out = Vec::new();
    s.body_ready(Err(BodyError::Vanished), &mut out);
    match feed(&mut s, "QUIT\r\n").1 {
        Some(Effect::Commit(update)) => assert!(update.retrieved.is_empty()),
        other => panic!("{other:?}"),
    }
}

/// A big maildrop that counts how often a size is asked for and keeps its
/// total, as the mailbox index does.
struct IndexedDrop {
    count: usize,
    octets_asked: std::sync::atomic::AtomicUsize,
}

impl Maildrop for IndexedDrop {
    fn count(&self) -> usize {
        self.count
    }
    fn octets(&self, _: usize) -> u64 {
        self.octets_asked
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        100
    }
    fn uidl(&self, _: usize) -> &[u8] {
        b"u"
    }
    fn total_octets(&self) -> u64 {
        self.count as u64 * 100
    }
}

#[test]
fn stat_after_login_takes_the_stored_total_without_a_walk() {
    let drop = std::sync::Arc::new(IndexedDrop {
        count: 20_000,
        octets_asked: Default::default(),
    });
    struct Shared(std::sync::Arc<IndexedDrop>);
    impl Maildrop for Shared {
        fn count(&self) -> usize {
            self.0.count()
        }
        fn octets(&self, i: usize) -> u64 {
            self.0.octets(i)
        }
        fn uidl(&self, i: usize) -> &[u8] {
            self.0.uidl(i)
        }
        fn total_octets(&self) -> u64 {
            self.0.total_octets()
        }
    }
    let mut s = new_session();
    say(&mut s, "USER a\r\n");
    feed(&mut s, "PASS b\r\n");
    let mut out = Vec::new();
    s.complete(
        Completion::LoggedIn(Box::new(Shared(std::sync::Arc::clone(&drop)))),
        &mut out,
    );
    assert_eq!(say(&mut s, "STAT\r\n"), "+OK 20000 2000000\r\n");
    let asked = || drop.octets_asked.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(asked(), 0, "login and STAT walk no message");
    // DELE and RSET keep the total right from there.
    say(&mut s, "DELE 7\r\n");
    assert_eq!(say(&mut s, "STAT\r\n"), "+OK 19999 1999900\r\n");
    assert_eq!(asked(), 1);
}

#[test]
fn a_listing_grows_its_buffer_once_per_chunk() {
    let uidl: &'static str = "x".repeat(70).leak();
    let many: Vec<(u64, &'static str)> = (0..5_000).map(|_| (7, uidl)).collect();
    let high_water = 16 * 1024;
    let limits = Limits {
        output_high_water_bytes: high_water,
        ..Limits::default()
    };
    let mut s = Session::new(limits, offer(), None);
    say(&mut s, "USER a\r\n");
    feed(&mut s, "PASS b\r\n");
    let mut out = Vec::new();
    s.complete(Completion::LoggedIn(Box::new(MemDrop(many))), &mut out);
    for (command, line_max) in [
        ("UIDL\r\n", reply::UIDL_LINE_BYTES_MAX),
        ("LIST\r\n", reply::LIST_LINE_BYTES_MAX),
    ] {
        let mut out = Vec::new();
        s.handle_input(command.as_bytes(), &mut out);
        let mut text = Vec::new();
        let mut chunks = 0;
        loop {
            // Reserved once, exactly: a buffer that grew line by line
            // would have doubled past this.
            assert_eq!(out.capacity(), high_water + line_max, "{command}");
            text.extend_from_slice(&out);
            chunks += 1;
            if !s.has_pending_output() {
                break;
            }
            out = Vec::new();
            s.continue_output(&mut out);
        }
        assert_eq!(chunks, text.len().div_ceil(high_water), "{command}");
        let text = String::from_utf8(text).unwrap();
        assert_eq!(text.lines().count(), 5_000 + 2, "{command}");
        assert!(text.ends_with(".\r\n"));
    }
}

fn logged_in_flagged(seen_on_retr: bool) -> Session {
    let limits = Limits {
        seen_on_retr,
        ..Limits::default()
    };
    let mut s = Session::new(limits, offer(), None);
    say(&mut s, "USER alice\r\n");
    assert!(feed(&mut s, "PASS secret\r\n").1.is_some());
    // `drop3()`'s messages, of which only the second is already \Seen.
    let flagged = OwnedDrop {
        records: MemDrop(vec![(120, "uid-a"), (200, "uid-b"), (5, "uid-c")]),
        policy: None,
        seen: |index| index == 1,
    };
    let mut out = Vec::new();
    assert!(
        s.complete(Completion::LoggedIn(Box::new(flagged)), &mut out)
            .is_none()
    );
    s
}

fn top(s: &mut Session, n: u32) {
    assert!(matches!(
        feed(s, &format!("TOP {n} 0\r\n")).1,
        Some(Effect::SendBody {
            top_lines: Some(0),
            ..
        })
    ));
    let mut out = Vec::new();
    s.body_ready(Ok(()), &mut out);
    s.body_sent();
}

#[test]
fn retr_flags_unseen_messages_seen_at_quit_as_dovecot_does() {
    // RETR of an unseen message: QUIT goes through UPDATE for the flag
    // alone. A message already \Seen and one only read by TOP are not in it.
    let mut s = logged_in_flagged(true);
    retr(&mut s, 1);
    retr(&mut s, 2);
    top(&mut s, 3);
    match feed(&mut s, "QUIT\r\n").1 {
        Some(Effect::Commit(update)) => assert_eq!(
            update,
            Update {
                deleted: vec![],
                retrieved: vec![],
                seen: vec![0]
            }
        ),
        other => panic!("{other:?}"),
    }
    // RSET forgets the flags (Dovecot's too); a marked message gets none.
    let mut s = logged_in_flagged(true);
    retr(&mut s, 1);
    say(&mut s, "RSET\r\n");
    retr(&mut s, 3);
    say(&mut s, "DELE 3\r\n");
    match feed(&mut s, "QUIT\r\n").1 {
        Some(Effect::Commit(update)) => assert_eq!(update.seen, Vec::<usize>::new()),
        other => panic!("{other:?}"),
    }
    // pop3_no_flag_updates: nothing to do at QUIT.
    let mut s = logged_in_flagged(false);
    retr(&mut s, 1);
    assert!(matches!(feed(&mut s, "QUIT\r\n").1, Some(Effect::Close)));
}
