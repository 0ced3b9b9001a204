//! The PROXY protocol header (HAProxy's `proxy-protocol.txt`, versions 1 and
//! 2) that a trusted front end (HAProxy, nginx) sends before anything else on
//! a connection, so the server learns the client's real address.
//!
//! Sans-IO, like [`super::command`]: the caller feeds the bytes received so
//! far and gets [`Status::Partial`] (read more), [`Status::Complete`] with the
//! header and the bytes it used, or a [`ProxyError`] (close the connection;
//! the error's [`ProxyError::reason`] is the log line's cause). Nothing is
//! allocated. Whether a peer must send a header (it is in `proxy_from`) and
//! how long it may take (a deadline) are the engine's decisions; the bytes
//! are judged here.
//!
//! Strictness, where the specification leaves room:
//! - v1: exactly one space between fields, CRLF required (a bare LF or a CR
//!   not followed by LF is an error), at most 107 bytes with the CRLF, ports
//!   in canonical decimal (no sign, no leading zero), addresses in the
//!   family the protocol word names. `UNKNOWN` may be followed by anything
//!   up to the CRLF, which is ignored.
//! - v2: version nibble 2, command `LOCAL` or `PROXY`. `LOCAL` (a health
//!   check) ignores the family and the whole address block. `PROXY` takes
//!   `AF_INET`/`AF_INET6` over `STREAM`, or `AF_UNSPEC` (the connection's own
//!   addresses stand); `AF_UNIX` and `DGRAM` are refused, as the spec allows,
//!   because a POP3 client always has an IP address. The length after the
//!   16-byte header may not exceed [`V2_PAYLOAD_BYTES_MAX`]. TLVs must tile
//!   the rest of the block exactly; they are skipped except `PP2_TYPE_SSL`,
//!   whose `PP2_CLIENT_SSL` bit says the client spoke TLS to the proxy.
//!   `PP2_TYPE_CRC32C` is not verified (the spec makes it optional).
#![forbid(unsafe_code)]

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

pub use super::command::Status;

/// The 12 bytes every v2 header starts with.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// What every v1 header starts with.
const V1_PREFIX: &[u8] = b"PROXY ";
/// The longest v1 line, CRLF included (spec §2.1).
pub const V1_BYTES_MAX: usize = 107;
/// The fixed part of a v2 header: signature, version/command, family, length.
pub const V2_HEADER_BYTES: usize = 16;
/// The most a v2 header may carry after its fixed 16 bytes. HAProxy's
/// address block is at most 216 bytes (AF_UNIX) and its usual TLVs (SSL
/// version, cipher, client-certificate CN, unique id, AWS/Azure ids) a few
/// hundred more; anything past this cap is refused rather than buffered.
pub const V2_PAYLOAD_BYTES_MAX: usize = 1024;
/// The longest header of either version this parser accepts: the engine's
/// receive buffer must hold at least this many bytes.
pub const HEADER_BYTES_MAX: usize = V2_HEADER_BYTES + V2_PAYLOAD_BYTES_MAX;

const PP2_TYPE_SSL: u8 = 0x20;
const PP2_CLIENT_SSL: u8 = 0x01;

/// Which version of the protocol the header used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// The text form (`PROXY TCP4 ...\r\n`).
    V1,
    /// The binary form.
    V2,
}

/// A parsed header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// The version the proxy used.
    pub version: Version,
    /// The client's and the proxy's side of the proxied connection. `None`
    /// for v1 `UNKNOWN`, v2 `LOCAL` (a health check by the proxy itself) and
    /// v2 `AF_UNSPEC`: the connection's own addresses stand.
    pub addresses: Option<Addresses>,
    /// v2 only: the proxy says the client connected to it over TLS
    /// (`PP2_TYPE_SSL` with `PP2_CLIENT_SSL` set). Whether that counts as TLS
    /// for the plaintext-auth policy is the operator's choice.
    pub client_tls: bool,
}

impl Header {
    /// The client's address, if the header carries one.
    pub fn source(&self) -> Option<SocketAddr> {
        self.addresses.map(|a| a.source)
    }

    /// The address the connection is judged by from now on: the header's
    /// source, or `peer` (the socket's own) for LOCAL, UNKNOWN and AF_UNSPEC.
    pub fn client(&self, peer: SocketAddr) -> SocketAddr {
        self.source().unwrap_or(peer)
    }
}

/// The two ends of the connection the proxy accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Addresses {
    /// The client.
    pub source: SocketAddr,
    /// The address the client connected to (the proxy's listener).
    pub destination: SocketAddr,
}

/// Why the bytes are not an acceptable PROXY header. Every one closes the
/// connection without a greeting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyError {
    /// The connection does not start with a v1 or v2 header.
    Missing,
    /// A v1 line reached 107 bytes without its CRLF.
    V1TooLong,
    /// A v1 line ends in a bare LF, or holds a CR not followed by LF.
    V1NoCrlf,
    /// The v1 protocol word is not `TCP4`, `TCP6` or `UNKNOWN`.
    V1Protocol,
    /// A v1 line does not have exactly four fields after TCP4/TCP6, or has a
    /// byte that is not printable ASCII.
    V1Fields,
    /// A v1 address is not a valid address of the protocol's family.
    V1Address,
    /// A v1 port is not a canonical decimal in 0..=65535.
    V1Port,
    /// The v2 version nibble is not 2.
    V2Version,
    /// The v2 command is neither LOCAL nor PROXY.
    V2Command,
    /// The v2 family/transport byte of a PROXY command is not one of the
    /// seven the spec defines.
    V2Family,
    /// A v2 PROXY header for AF_UNIX or DGRAM, which a POP3 client cannot be.
    V2Unsupported,
    /// The v2 length is past [`V2_PAYLOAD_BYTES_MAX`].
    V2TooLong,
    /// The v2 length is shorter than its family's address block.
    V2ShortAddress,
    /// A v2 TLV runs past the header, or PP2_TYPE_SSL is shorter than 5 bytes.
    V2Tlv,
}

impl ProxyError {
    /// The cause, for the one log line that reports the closed connection.
    pub fn reason(self) -> &'static str {
        match self {
            ProxyError::Missing => "no PROXY protocol header",
            ProxyError::V1TooLong => "PROXY v1 line longer than 107 bytes",
            ProxyError::V1NoCrlf => "PROXY v1 line without CRLF",
            ProxyError::V1Protocol => "PROXY v1 protocol is not TCP4, TCP6 or UNKNOWN",
            ProxyError::V1Fields => "PROXY v1 line is malformed",
            ProxyError::V1Address => "PROXY v1 address is invalid",
            ProxyError::V1Port => "PROXY v1 port is invalid",
            ProxyError::V2Version => "PROXY v2 version is not 2",
            ProxyError::V2Command => "PROXY v2 command is neither LOCAL nor PROXY",
            ProxyError::V2Family => "PROXY v2 family or transport is undefined",
            ProxyError::V2Unsupported => "PROXY v2 for AF_UNIX or DGRAM",
            ProxyError::V2TooLong => "PROXY v2 length past the cap",
            ProxyError::V2ShortAddress => "PROXY v2 length shorter than its addresses",
            ProxyError::V2Tlv => "PROXY v2 TLV is malformed",
        }
    }
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for ProxyError {}

/// Parses a PROXY header of either version from the front of `buf`, the
/// bytes received so far. `Complete((header, consumed))`: the POP3 (or TLS)
/// stream starts at `buf[consumed..]`.
pub fn parse(buf: &[u8]) -> Result<Status<(Header, usize)>, ProxyError> {
    if starts_with_prefix(buf, &V2_SIGNATURE) {
        if buf.len() < V2_SIGNATURE.len() {
            return Ok(Status::Partial);
        }
        return parse_v2(buf);
    }
    if starts_with_prefix(buf, V1_PREFIX) {
        if buf.len() < V1_PREFIX.len() {
            return Ok(Status::Partial);
        }
        return parse_v1(buf);
    }
    Err(ProxyError::Missing)
}

/// True when `buf` starts with a whole v1 prefix (`PROXY `) or the whole
/// v2 signature: the engine's test for a header sent by a peer that is not
/// in `proxy_from` (its first bytes, before they reach the POP3 parser).
/// Shorter input is never judged a header, so a client whose first line
/// happens to be empty is not mistaken for a proxy.
pub fn looks_like_header(buf: &[u8]) -> bool {
    buf.starts_with(&V2_SIGNATURE) || buf.starts_with(V1_PREFIX)
}

/// `buf` and `prefix` agree on their common length.
fn starts_with_prefix(buf: &[u8], prefix: &[u8]) -> bool {
    let n = buf.len().min(prefix.len());
    buf[..n] == prefix[..n]
}

fn parse_v1(buf: &[u8]) -> Result<Status<(Header, usize)>, ProxyError> {
    let window = &buf[..buf.len().min(V1_BYTES_MAX)];
    // A CR must be followed by LF, and an LF preceded by CR, wherever they are.
    let Some(end) = memchr::memchr2(b'\r', b'\n', window) else {
        return if buf.len() >= V1_BYTES_MAX {
            Err(ProxyError::V1TooLong)
        } else {
            Ok(Status::Partial)
        };
    };
    if window[end] == b'\n' {
        return Err(ProxyError::V1NoCrlf);
    }
    match window.get(end + 1) {
        Some(b'\n') => {}
        Some(_) => return Err(ProxyError::V1NoCrlf),
        None if end + 1 >= V1_BYTES_MAX => return Err(ProxyError::V1TooLong),
        None => return Ok(Status::Partial),
    }
    let line = &window[V1_PREFIX.len()..end];
    let consumed = end + 2;
    let header = |addresses| Header {
        version: Version::V1,
        addresses,
        client_tls: false,
    };
    // UNKNOWN: whatever follows (after a space) is ignored (spec §2.1).
    if let Some(rest) = line.strip_prefix(b"UNKNOWN")
        && (rest.is_empty() || rest[0] == b' ')
    {
        return Ok(Status::Complete((header(None), consumed)));
    }
    if !line
        .iter()
        .all(|&b| (0x21..=0x7e).contains(&b) || b == b' ')
    {
        return Err(ProxyError::V1Fields);
    }
    let mut fields = line.split(|&b| b == b' ');
    let v6 = match fields.next() {
        Some(b"TCP4") => false,
        Some(b"TCP6") => true,
        _ => return Err(ProxyError::V1Protocol),
    };
    let (Some(src), Some(dst), Some(sport), Some(dport), None) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return Err(ProxyError::V1Fields);
    };
    let source = SocketAddr::new(v1_address(src, v6)?, v1_port(sport)?);
    let destination = SocketAddr::new(v1_address(dst, v6)?, v1_port(dport)?);
    let addresses = Addresses {
        source,
        destination,
    };
    Ok(Status::Complete((header(Some(addresses)), consumed)))
}

fn v1_address(field: &[u8], v6: bool) -> Result<IpAddr, ProxyError> {
    // The bytes were checked to be ASCII above, so this cannot fail; an
    // empty field (two spaces) fails the address parse.
    let text = std::str::from_utf8(field).map_err(|_| ProxyError::V1Address)?;
    let parsed = if v6 {
        text.parse::<Ipv6Addr>().map(IpAddr::V6)
    } else {
        text.parse::<Ipv4Addr>().map(IpAddr::V4)
    };
    parsed.map_err(|_| ProxyError::V1Address)
}

fn v1_port(field: &[u8]) -> Result<u16, ProxyError> {
    let canonical = !field.is_empty()
        && field.len() <= 5
        && field.iter().all(u8::is_ascii_digit)
        && (field[0] != b'0' || field.len() == 1);
    if !canonical {
        return Err(ProxyError::V1Port);
    }
    let value = field
        .iter()
        .fold(0u32, |n, &d| n * 10 + u32::from(d - b'0'));
    u16::try_from(value).map_err(|_| ProxyError::V1Port)
}

fn parse_v2(buf: &[u8]) -> Result<Status<(Header, usize)>, ProxyError> {
    // Judge each fixed byte as soon as it arrives: a bad header is refused
    // without waiting for the rest of it.
    if let Some(&ver_cmd) = buf.get(12) {
        if ver_cmd >> 4 != 2 {
            return Err(ProxyError::V2Version);
        }
        if ver_cmd & 0x0f > 1 {
            return Err(ProxyError::V2Command);
        }
    }
    // LOCAL discards "the protocol block including the family", so only a
    // PROXY command's family byte is judged. The spec lists seven values
    // and tells receivers to drop any other.
    if let (Some(&ver_cmd), Some(&fam)) = (buf.get(12), buf.get(13))
        && ver_cmd & 0x0f == 1
        && !matches!(fam, 0x00 | 0x11 | 0x12 | 0x21 | 0x22 | 0x31 | 0x32)
    {
        return Err(ProxyError::V2Family);
    }
    let (Some(&hi), Some(&lo)) = (buf.get(14), buf.get(15)) else {
        return Ok(Status::Partial);
    };
    let len = usize::from(u16::from_be_bytes([hi, lo]));
    if len > V2_PAYLOAD_BYTES_MAX {
        return Err(ProxyError::V2TooLong);
    }
    let consumed = V2_HEADER_BYTES + len;
    let Some(payload) = buf.get(V2_HEADER_BYTES..consumed) else {
        return Ok(Status::Partial);
    };
    let local = buf[12] & 0x0f == 0;
    let header = if local {
        // A health check from the proxy: "the receiver must ... use the real
        // connection endpoints and discard the protocol block".
        Header {
            version: Version::V2,
            addresses: None,
            client_tls: false,
        }
    } else {
        v2_proxy(buf[13], payload)?
    };
    Ok(Status::Complete((header, consumed)))
}

fn v2_proxy(fam: u8, payload: &[u8]) -> Result<Header, ProxyError> {
    // 0x00 UNSPEC, 0x11 TCP over IPv4, 0x21 TCP over IPv6; the DGRAM and
    // AF_UNIX values are defined but no POP3 client can be one.
    let (family, address_bytes) = match fam {
        0x00 => (0, 0),
        0x11 => (1, 12),
        0x21 => (2, 36),
        _ => return Err(ProxyError::V2Unsupported),
    };
    if payload.len() < address_bytes {
        return Err(ProxyError::V2ShortAddress);
    }
    let (block, tlvs) = payload.split_at(address_bytes);
    let addresses = match family {
        1 => Some(v2_inet(block)),
        2 => Some(v2_inet6(block)),
        _ => None,
    };
    Ok(Header {
        version: Version::V2,
        addresses,
        client_tls: v2_client_tls(tlvs)?,
    })
}

fn v2_inet(block: &[u8]) -> Addresses {
    let ip = |at: usize| Ipv4Addr::new(block[at], block[at + 1], block[at + 2], block[at + 3]);
    let port = |at: usize| u16::from_be_bytes([block[at], block[at + 1]]);
    Addresses {
        source: SocketAddr::new(IpAddr::V4(ip(0)), port(8)),
        destination: SocketAddr::new(IpAddr::V4(ip(4)), port(10)),
    }
}

fn v2_inet6(block: &[u8]) -> Addresses {
    let ip = |at: usize| {
        let mut octets = [0u8; 16];
        octets.copy_from_slice(&block[at..at + 16]);
        Ipv6Addr::from(octets)
    };
    let port = |at: usize| u16::from_be_bytes([block[at], block[at + 1]]);
    Addresses {
        source: SocketAddr::new(IpAddr::V6(ip(0)), port(32)),
        destination: SocketAddr::new(IpAddr::V6(ip(16)), port(34)),
    }
}

/// Walks the TLVs; true when PP2_TYPE_SSL says the client used TLS.
fn v2_client_tls(mut tlvs: &[u8]) -> Result<bool, ProxyError> {
    let mut client_tls = false;
    while !tlvs.is_empty() {
        let [kind, hi, lo, rest @ ..] = tlvs else {
            return Err(ProxyError::V2Tlv);
        };
        let len = usize::from(u16::from_be_bytes([*hi, *lo]));
        if rest.len() < len {
            return Err(ProxyError::V2Tlv);
        }
        let (value, next) = rest.split_at(len);
        if *kind == PP2_TYPE_SSL {
            // client (1 byte), verify (4 bytes), then sub-TLVs we skip.
            if value.len() < 5 {
                return Err(ProxyError::V2Tlv);
            }
            client_tls = value[0] & PP2_CLIENT_SSL != 0;
        }
        tlvs = next;
    }
    Ok(client_tls)
}

#[cfg(test)]
#[path = "proxy_tests.rs"]
mod tests;
