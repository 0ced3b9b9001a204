//! Session tickets from a key file shared by a cluster (`[tls]
//! ticket_key_file`), so a client resumes on whichever node the load
//! balancer picks.
//!
//! The file holds one key per line, 128 hex digits (64 bytes: a 32-byte
//! key name, then a 32-byte AES-256-GCM key); `#` starts a comment, blank
//! lines are skipped. Make one with `openssl rand -hex 64`. The first key
//! encrypts new tickets; every key in the file decrypts. On reload
//! (SIGHUP) the key that encrypted until then keeps decrypting too, so
//! replacing a one-line file with a new key does not end sessions issued a
//! moment ago. For a cluster, rotate in two steps so no node meets a ticket
//! from a key it has not loaded yet: add the new key as the second line
//! everywhere and reload, then move it first and reload again.
//!
//! A ticket is `key name (32) | nonce (12) | AES-256-GCM(issued_at (8, big
//! endian unix seconds) | rustls session state) | tag (16)`; the key name is
//! authenticated as associated data. A ticket older than its lifetime is
//! refused even if its key is still loaded, so a key file left unrotated
//! does not keep sessions alive forever (rotating the file is still what
//! bounds the damage of a stolen key).

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use rustls::server::ProducesTickets;
use subtle::ConstantTimeEq;

use super::TlsError;
use super::config::read_bounded;

/// Bytes of a key name, sent in clear at the start of every ticket.
pub const TICKET_KEY_NAME_BYTES: usize = 32;
/// Bytes of one key in the file: the name, then the AES-256-GCM key.
pub const TICKET_KEY_BYTES: usize = TICKET_KEY_NAME_BYTES + 32;
/// Most keys a file may hold (all of them are tried by name, not by
/// decryption, so the bound is about mistakes, not cost).
pub const TICKET_KEYS_MAX: usize = 16;
/// How long a ticket is good for, in seconds, and the lifetime hint sent
/// to clients: 12 hours, as rustls' own ticketer.
pub const TICKET_LIFETIME_S: u32 = 12 * 60 * 60;
/// How far in the future a ticket's issue time may be (clocks of cluster
/// nodes differ a little) before it is refused.
const CLOCK_SKEW_S: u64 = 5 * 60;
const ISSUED_AT_BYTES: usize = 8;
const TAG_BYTES: usize = 16;

/// One ticket key. The AES key never leaves ring; the name is public.
pub struct TicketKey {
    name: [u8; TICKET_KEY_NAME_BYTES],
    key: LessSafeKey,
}

impl fmt::Debug for TicketKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The name only: it is on the wire anyway; the key is not printed.
        write!(f, "TicketKey({:02x?}…)", &self.name[..4])
    }
}

impl TicketKey {
    /// A key from its 64 bytes (name, then AES-256 key).
    fn from_bytes(bytes: &[u8; TICKET_KEY_BYTES]) -> TicketKey {
        let (name_bytes, key_bytes) = bytes.split_at(TICKET_KEY_NAME_BYTES);
        let mut name = [0u8; TICKET_KEY_NAME_BYTES];
        name.copy_from_slice(name_bytes);
        let unbound = UnboundKey::new(&AES_256_GCM, key_bytes).expect("32 bytes is an AES-256 key");
        TicketKey {
            name,
            key: LessSafeKey::new(unbound),
        }
    }
}

/// Reads a ticket key file: the encrypting key first, then the others.
/// Every error names the file (and the line), never key material.
pub fn read_ticket_keys(path: &Path) -> Result<Vec<Arc<TicketKey>>, TlsError> {
    let mut text = read_bounded(path)?;
    let keys = parse_ticket_keys(&text).map_err(|(line, reason)| TlsError::TicketKeys {
        path: path.to_path_buf(),
        line,
        reason,
    });
    text.fill(0);
    std::hint::black_box(&text);
    keys
}

/// The keys of a key file's text; on error the 1-based line (0: the file as
/// a whole) and why. Public for the fuzz target; the server reads files
/// with [`read_ticket_keys`].
pub fn parse_ticket_keys(text: &[u8]) -> Result<Vec<Arc<TicketKey>>, (usize, &'static str)> {
    let mut keys = Vec::new();
    for (index, line) in text.split(|&b| b == b'\n').enumerate() {
        let line = line.split(|&b| b == b'#').next().unwrap_or_default();
        let line = line.trim_ascii();
        if line.is_empty() {
            continue;
        }
        if keys.len() == TICKET_KEYS_MAX {
            return Err((index + 1, "more keys than the 16 allowed"));
        }
        let mut bytes = [0u8; TICKET_KEY_BYTES];
        let decoded = decode_hex(line, &mut bytes);
        if decoded.is_ok() {
            keys.push(Arc::new(TicketKey::from_bytes(&bytes)));
        }
        bytes.fill(0);
        std::hint::black_box(&bytes);
        decoded.map_err(|reason| (index + 1, reason))?;
    }
    if keys.is_empty() {
        return Err((0, "no key in it (make one with `openssl rand -hex 64`)"));
    }
    Ok(keys)
}

/// Exactly `out.len()` bytes from hex digits.
fn decode_hex(hex: &[u8], out: &mut [u8]) -> Result<(), &'static str> {
    if hex.len() != out.len() * 2 {
        return Err("a key is 128 hex digits (64 bytes)");
    }
    let digit = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    };
    for (byte, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        let (Some(high), Some(low)) = (digit(pair[0]), digit(pair[1])) else {
            return Err("not a hex digit");
        };
        *byte = high << 4 | low;
    }
    Ok(())
}

/// A rustls ticketer over keys from a file: the first encrypts, all
/// decrypt. Immutable: a reload builds a new one
/// ([`FileTicketer::rotated`]).
pub struct FileTicketer {
    /// Never empty; `keys[0]` encrypts.
    keys: Vec<Arc<TicketKey>>,
    rng: SystemRandom,
}

impl fmt::Debug for FileTicketer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileTicketer")
            .field("keys", &self.keys.len())
            .finish_non_exhaustive()
    }
}

impl FileTicketer {
    /// A ticketer over `keys` (from [`read_ticket_keys`], never empty).
    pub fn new(keys: Vec<Arc<TicketKey>>) -> FileTicketer {
        assert!(!keys.is_empty(), "a ticket key file has at least one key");
        FileTicketer {
            keys,
            rng: SystemRandom::new(),
        }
    }

    /// The ticketer after a reload read `keys`: the key that encrypted
    /// until now still decrypts (last, unless the file still has it).
    pub fn rotated(&self, mut keys: Vec<Arc<TicketKey>>) -> FileTicketer {
        let previous = &self.keys[0];
        if !keys.iter().any(|k| k.name == previous.name) {
            keys.push(previous.clone());
        }
        FileTicketer::new(keys)
    }

    /// How many keys decrypt (for the reload log line and tests).
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    fn seal(&self, plain: &[u8], now_s: u64) -> Option<Vec<u8>> {
        let key = &self.keys[0];
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).ok()?;
        let mut ticket = Vec::with_capacity(
            TICKET_KEY_NAME_BYTES + NONCE_LEN + ISSUED_AT_BYTES + plain.len() + TAG_BYTES,
        );
        ticket.extend_from_slice(&key.name);
        ticket.extend_from_slice(&nonce);
        let sealed_from = ticket.len();
        ticket.extend_from_slice(&now_s.to_be_bytes());
        ticket.extend_from_slice(plain);
        let tag = key
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&key.name),
                &mut ticket[sealed_from..],
            )
            .ok()?;
        ticket.extend_from_slice(tag.as_ref());
        Some(ticket)
    }

    fn open(&self, ticket: &[u8], now_s: u64) -> Option<Vec<u8>> {
        let (name, rest) = ticket.split_at_checked(TICKET_KEY_NAME_BYTES)?;
        let (nonce, sealed) = rest.split_at_checked(NONCE_LEN)?;
        if sealed.len() < ISSUED_AT_BYTES + TAG_BYTES {
            return None;
        }
        let key = self
            .keys
            .iter()
            .find(|k| bool::from(k.name.as_slice().ct_eq(name)))?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buf = sealed.to_vec();
        let plain_len = key
            .key
            .open_in_place(nonce, Aad::from(name), &mut buf)
            .ok()?
            .len();
        buf.truncate(plain_len);
        let issued_s = u64::from_be_bytes(buf[..ISSUED_AT_BYTES].try_into().ok()?);
        let fresh = issued_s <= now_s + CLOCK_SKEW_S
            && now_s.saturating_sub(issued_s) <= u64::from(TICKET_LIFETIME_S);
        if !fresh {
            return None;
        }
        buf.drain(..ISSUED_AT_BYTES);
        Some(buf)
    }
}

fn unix_now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl ProducesTickets for FileTicketer {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        TICKET_LIFETIME_S
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.seal(plain, unix_now_s())
    }

    fn decrypt(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        self.open(ticket, unix_now_s())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_line(fill: u8) -> String {
        format!("{:02x}", fill).repeat(TICKET_KEY_BYTES)
    }

    fn ticketer(lines: &[String]) -> FileTicketer {
        FileTicketer::new(parse_ticket_keys(lines.join("\n").as_bytes()).unwrap())
    }

    #[test]
    fn a_ticket_opens_with_the_same_key_file_only() {
        let a = ticketer(&[key_line(1)]);
        let also_a = ticketer(&[key_line(1)]);
        let b = ticketer(&[key_line(2)]);
        let ticket = a.encrypt(b"session state").unwrap();
        assert_eq!(also_a.decrypt(&ticket).unwrap(), b"session state");
        assert_eq!(b.decrypt(&ticket), None);
        // Random nonces: the same state never gives the same ticket.
        assert_ne!(a.encrypt(b"session state").unwrap(), ticket);
    }

    #[test]
    fn every_key_decrypts_and_the_first_encrypts() {
        let old = ticketer(&[key_line(1)]);
        let new = ticketer(&[key_line(2), key_line(1)]);
        let old_ticket = old.encrypt(b"x").unwrap();
        assert_eq!(new.decrypt(&old_ticket).unwrap(), b"x");
        let new_ticket = new.encrypt(b"y").unwrap();
        assert_eq!(old.decrypt(&new_ticket), None);
        assert_eq!(&new_ticket[..TICKET_KEY_NAME_BYTES], &[0x02; 32]);
    }

    #[test]
    fn rotation_keeps_the_previous_key_for_decryption() {
        let before = ticketer(&[key_line(1)]);
        let ticket = before.encrypt(b"state").unwrap();
        let after = before.rotated(parse_ticket_keys(key_line(2).as_bytes()).unwrap());
        assert_eq!(after.key_count(), 2);
        assert_eq!(after.decrypt(&ticket).unwrap(), b"state");
        // The next rotation drops it: only one previous key is kept.
        let later = after.rotated(parse_ticket_keys(key_line(3).as_bytes()).unwrap());
        assert_eq!(later.key_count(), 2);
        assert_eq!(later.decrypt(&ticket), None);
        // Reloading the same file does not grow the list.
        let same = later.rotated(parse_ticket_keys(key_line(3).as_bytes()).unwrap());
        assert_eq!(same.key_count(), 1);
    }

    #[test]
    fn tickets_expire_and_future_ones_are_refused() {
        let t = ticketer(&[key_line(1)]);
        let now = 1_800_000_000;
        let ticket = t.seal(b"s", now).unwrap();
        let lifetime = u64::from(TICKET_LIFETIME_S);
        assert!(t.open(&ticket, now + lifetime).is_some());
        assert!(t.open(&ticket, now + lifetime + 1).is_none());
        assert!(t.open(&ticket, now - CLOCK_SKEW_S).is_some());
        assert!(t.open(&ticket, now - CLOCK_SKEW_S - 1).is_none());
    }

    #[test]
    fn tampered_and_short_tickets_are_refused() {
        let t = ticketer(&[key_line(1)]);
        let ticket = t.encrypt(b"state").unwrap();
        for at in 0..ticket.len() {
            let mut bad = ticket.clone();
            bad[at] ^= 0x01;
            assert_eq!(t.decrypt(&bad), None, "flipped byte {at}");
        }
        for len in 0..ticket.len() {
            assert_eq!(t.decrypt(&ticket[..len]), None, "cut at {len}");
        }
    }

    #[test]
    fn key_file_syntax() {
        let two = format!(
            "# cluster keys\n\n{}  # current\n  {}\n",
            key_line(1),
            key_line(2)
        );
        assert_eq!(parse_ticket_keys(two.as_bytes()).unwrap().len(), 2);
        let upper = key_line(0xab).to_uppercase();
        assert_eq!(parse_ticket_keys(upper.as_bytes()).unwrap().len(), 1);
        let crlf = format!("{}\r\n", key_line(1));
        assert_eq!(parse_ticket_keys(crlf.as_bytes()).unwrap().len(), 1);

        let error = |text: &str| parse_ticket_keys(text.as_bytes()).unwrap_err();
        assert_eq!(error("").0, 0);
        assert_eq!(error("# only a comment\n").0, 0);
        assert_eq!(error(&format!("{}\nabcd\n", key_line(1))).0, 2);
        let mut bad_digit = key_line(1);
        bad_digit.replace_range(10..11, "g");
        assert_eq!(error(&bad_digit), (1, "not a hex digit"));
        let many = vec![key_line(1); TICKET_KEYS_MAX + 1].join("\n");
        assert_eq!(error(&many).0, TICKET_KEYS_MAX + 1);
        // Non-UTF-8 bytes are an error, not a panic.
        assert_eq!(parse_ticket_keys(&[0xff, 0xfe, b'\n']).unwrap_err().0, 1);
    }
}
