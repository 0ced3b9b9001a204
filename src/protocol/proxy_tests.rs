use super::*;
use proptest::prelude::*;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn addresses(source: &str, destination: &str) -> Option<Addresses> {
    Some(Addresses {
        source: addr(source),
        destination: addr(destination),
    })
}

fn complete(buf: &[u8]) -> (Header, usize) {
    match parse(buf) {
        Ok(Status::Complete(done)) => done,
        other => panic!("{:?}: {other:?}", String::from_utf8_lossy(buf)),
    }
}

/// A v2 header: version/command byte, family byte, then the payload.
fn v2(ver_cmd: u8, fam: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = V2_SIGNATURE.to_vec();
    out.push(ver_cmd);
    out.push(fam);
    out.extend_from_slice(&u16::try_from(payload.len()).unwrap().to_be_bytes());
    out.extend_from_slice(payload);
    out
}

fn inet_block(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&src);
    b.extend_from_slice(&dst);
    b.extend_from_slice(&sport.to_be_bytes());
    b.extend_from_slice(&dport.to_be_bytes());
    b
}

fn inet6_block(src: Ipv6Addr, dst: Ipv6Addr, sport: u16, dport: u16) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&src.octets());
    b.extend_from_slice(&dst.octets());
    b.extend_from_slice(&sport.to_be_bytes());
    b.extend_from_slice(&dport.to_be_bytes());
    b
}

fn tlv(kind: u8, value: &[u8]) -> Vec<u8> {
    let mut b = vec![kind];
    b.extend_from_slice(&u16::try_from(value.len()).unwrap().to_be_bytes());
    b.extend_from_slice(value);
    b
}

fn v1(version: Version, addresses: Option<Addresses>) -> Header {
    Header {
        version,
        addresses,
        client_tls: false,
    }
}

#[test]
fn v1_spec_examples() {
    let longest_v6 = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
    let cases: Vec<(String, Option<Addresses>)> = vec![
        (
            "PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n".into(),
            addresses("255.255.255.255:65535", "255.255.255.255:65535"),
        ),
        (
            format!("PROXY TCP6 {longest_v6} {longest_v6} 65535 65535\r\n"),
            addresses(
                &format!("[{longest_v6}]:65535"),
                &format!("[{longest_v6}]:65535"),
            ),
        ),
        ("PROXY UNKNOWN\r\n".into(), None),
        (
            format!("PROXY UNKNOWN {longest_v6} {longest_v6} 65535 65535\r\n"),
            None,
        ),
        (
            "PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n".into(),
            addresses("192.168.0.1:56324", "192.168.0.11:443"),
        ),
        (
            "PROXY TCP6 2001:db8::1 ::ffff:10.0.0.1 0 110\r\n".into(),
            addresses("[2001:db8::1]:0", "[::ffff:10.0.0.1]:110"),
        ),
    ];
    for (line, expected) in cases {
        assert!(line.len() <= V1_BYTES_MAX, "{line}");
        let mut buf = line.clone().into_bytes();
        buf.extend_from_slice(b"CAPA\r\n");
        assert_eq!(
            complete(&buf),
            (v1(Version::V1, expected), line.len()),
            "{line}"
        );
    }
}

#[test]
fn v1_the_longest_line_is_exactly_107_bytes() {
    let v6 = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
    let line = format!("PROXY UNKNOWN {v6} {v6} 65535 65535\r\n");
    assert_eq!(line.len(), V1_BYTES_MAX);
    assert_eq!(complete(line.as_bytes()).1, V1_BYTES_MAX);
    // One byte more and the CRLF falls past the limit.
    let longer = format!("PROXY UNKNOWN {v6} {v6} 65535 655350\r\n");
    assert_eq!(parse(longer.as_bytes()), Err(ProxyError::V1TooLong));
    // Only the CR within the limit: already too long, without waiting.
    assert_eq!(
        parse(&longer.as_bytes()[..V1_BYTES_MAX]),
        Err(ProxyError::V1TooLong)
    );
    let no_end = vec![b'A'; 200];
    let mut buf = b"PROXY ".to_vec();
    buf.extend_from_slice(&no_end);
    assert_eq!(parse(&buf), Err(ProxyError::V1TooLong));
    assert_eq!(parse(&buf[..V1_BYTES_MAX - 1]), Ok(Status::Partial));
}

#[test]
fn v1_malformations() {
    use ProxyError::*;
    let cases: &[(&[u8], ProxyError)] = &[
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", V1NoCrlf),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX", V1NoCrlf),
        (b"PROXY TCP4 1.2.3.4\r5.6.7.8 1 2\r\n", V1NoCrlf),
        (b"PROXY UNKNOWN\n", V1NoCrlf),
        (b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", V1Protocol),
        (b"PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n", V1Protocol),
        (b"PROXY UNKNOWNX\r\n", V1Protocol),
        (b"PROXY \r\n", V1Protocol),
        (b"PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n", V1Protocol),
        (b"PROXY TCP4\r\n", V1Fields),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", V1Fields),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", V1Fields),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", V1Fields),
        (b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n", V1Fields),
        (b"PROXY TCP4 1.2.3.4\t5.6.7.8 1 2\r\n", V1Fields),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 \x002\r\n", V1Fields),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\xff\r\n", V1Fields),
        (b"PROXY TCP4 ::1 ::1 1 2\r\n", V1Address),
        (b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n", V1Address),
        (b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n", V1Address),
        (b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n", V1Address),
        (b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n", V1Address),
        (b"PROXY TCP6 [::1] ::1 1 2\r\n", V1Address),
        (b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", V1Address),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", V1Port),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 099999\r\n", V1Port),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", V1Port),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n", V1Port),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n", V1Port),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 0x1 2\r\n", V1Port),
    ];
    for &(input, expected) in cases {
        assert_eq!(
            parse(input),
            Err(expected),
            "{:?}",
            String::from_utf8_lossy(input)
        );
    }
}

#[test]
fn not_a_header_is_refused_at_the_first_wrong_byte() {
    for input in [
        &b"USER alice\r\n"[..],
        b"P",
        b"PROXX",
        b"proxy TCP4",
        b"\x16\x03\x01\x02\x00", // a TLS ClientHello
        b"\r\n\r\n\0\r\nQUIX",
        b"\r\n\r\nX",
    ] {
        let expected = if input == b"P" {
            Ok(Status::Partial)
        } else {
            Err(ProxyError::Missing)
        };
        assert_eq!(parse(input), expected, "{input:?}");
    }
    assert_eq!(parse(b""), Ok(Status::Partial));
    assert_eq!(parse(b"PROXY"), Ok(Status::Partial));
    assert_eq!(parse(b"\r\n\r\n\0"), Ok(Status::Partial));
}

#[test]
fn looks_like_header_needs_a_whole_prefix() {
    assert!(looks_like_header(b"PROXY TCP4 "));
    assert!(looks_like_header(b"PROXY "));
    assert!(looks_like_header(&V2_SIGNATURE));
    assert!(!looks_like_header(b"PROXY"));
    assert!(!looks_like_header(b"PRO"));
    assert!(!looks_like_header(&V2_SIGNATURE[..11]));
    assert!(!looks_like_header(b"\r\n")); // an empty POP3 line
    assert!(!looks_like_header(b""));
    assert!(!looks_like_header(b"USER x\r\n"));
}

#[test]
fn the_client_address_is_the_source_or_the_peer() {
    let peer = addr("10.0.0.2:40000");
    let (proxied, _) = complete(b"PROXY TCP4 192.0.2.7 10.0.0.1 5555 110\r\n");
    assert_eq!(proxied.client(peer), addr("192.0.2.7:5555"));
    let (unknown, _) = complete(b"PROXY UNKNOWN\r\n");
    assert_eq!(unknown.client(peer), peer);
}

#[test]
fn v2_haproxy_capture() {
    // What HAProxy 2.x wrote with `send-proxy-v2` for 172.19.0.1:42578 →
    // 172.19.0.3:80, followed by the proxied bytes.
    let mut buf = vec![
        0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, 0x21, 0x11, 0x00,
        0x0c, 0xac, 0x13, 0x00, 0x01, 0xac, 0x13, 0x00, 0x03, 0xa6, 0x52, 0x00, 0x50,
    ];
    buf.extend_from_slice(b"CAPA\r\n");
    assert_eq!(
        complete(&buf),
        (
            Header {
                version: Version::V2,
                addresses: addresses("172.19.0.1:42578", "172.19.0.3:80"),
                client_tls: false,
            },
            28
        )
    );
}

#[test]
fn v2_families_and_commands() {
    let v6_src: Ipv6Addr = "2001:db8::7".parse().unwrap();
    let v6_dst: Ipv6Addr = "2001:db8::1".parse().unwrap();
    let proxied6 = v2(0x21, 0x21, &inet6_block(v6_src, v6_dst, 50000, 995));
    assert_eq!(
        complete(&proxied6),
        (
            Header {
                version: Version::V2,
                addresses: addresses("[2001:db8::7]:50000", "[2001:db8::1]:995"),
                client_tls: false,
            },
            16 + 36
        )
    );
    // AF_UNSPEC with PROXY: the connection's own addresses stand; the block
    // is skipped whatever it holds.
    let unspec = v2(0x21, 0x00, b"");
    assert_eq!(complete(&unspec).0.addresses, None);
    // LOCAL: the family and the block are ignored, even when they would be
    // refused under PROXY.
    for fam in [0x00, 0x11, 0x31, 0x45, 0xff] {
        let local = v2(0x20, fam, &[7; 5]);
        assert_eq!(
            complete(&local),
            (
                Header {
                    version: Version::V2,
                    addresses: None,
                    client_tls: false,
                },
                21
            )
        );
    }
    // Extra bytes after the address block are TLV space (here: one NOOP).
    let mut block = inet_block([10, 0, 0, 9], [10, 0, 0, 1], 1234, 110);
    block.extend(tlv(0x04, b"pad"));
    assert_eq!(
        complete(&v2(0x21, 0x11, &block)).0.source(),
        Some(addr("10.0.0.9:1234"))
    );
}

#[test]
fn v2_pp2_type_ssl() {
    let base = inet_block([192, 0, 2, 1], [192, 0, 2, 2], 40000, 110);
    let with = |tlvs: &[Vec<u8>]| {
        let mut payload = base.clone();
        for t in tlvs {
            payload.extend_from_slice(t);
        }
        v2(0x21, 0x11, &payload)
    };
    // client = PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN, verify = 0, then a
    // PP2_SUBTYPE_SSL_VERSION sub-TLV.
    let mut ssl = vec![0x03, 0, 0, 0, 0];
    ssl.extend(tlv(0x21, b"TLSv1.3"));
    type Case = (Vec<Vec<u8>>, Result<bool, ProxyError>);
    let cases: &[Case] = &[
        (vec![], Ok(false)),
        (vec![tlv(0x20, &ssl)], Ok(true)),
        (vec![tlv(0x01, b"pop3"), tlv(0x20, &ssl)], Ok(true)),
        (vec![tlv(0x20, &[0x00, 0, 0, 0, 0])], Ok(false)),
        (vec![tlv(0x20, &[0x02, 0, 0, 0, 0])], Ok(false)),
        (vec![tlv(0x20, &[0x01, 0, 0])], Err(ProxyError::V2Tlv)),
        (vec![vec![0x04, 0x00]], Err(ProxyError::V2Tlv)),
        (vec![vec![0x04, 0x00, 0x05, 1, 2]], Err(ProxyError::V2Tlv)),
        (vec![tlv(0x03, &[0; 4]), tlv(0xe0, b"x")], Ok(false)),
    ];
    for (tlvs, expected) in cases {
        let got = parse(&with(tlvs)).map(|s| match s {
            Status::Complete((h, _)) => h.client_tls,
            Status::Partial => panic!("partial"),
        });
        assert_eq!(&got, expected, "{tlvs:?}");
    }
}

#[test]
fn v2_malformations() {
    use ProxyError::*;
    let block = inet_block([1, 2, 3, 4], [5, 6, 7, 8], 1, 2);
    let cases: Vec<(Vec<u8>, ProxyError)> = vec![
        (v2(0x11, 0x11, &block), V2Version),
        (v2(0x31, 0x11, &block), V2Version),
        (v2(0x22, 0x11, &block), V2Command),
        (v2(0x2f, 0x11, &block), V2Command),
        (v2(0x21, 0x13, &block), V2Family),
        (v2(0x21, 0x41, &block), V2Family),
        (v2(0x21, 0x01, &block), V2Family),
        (v2(0x21, 0x10, &block), V2Family),
        (v2(0x21, 0x12, &block), V2Unsupported),
        (v2(0x21, 0x22, &[0; 36]), V2Unsupported),
        (v2(0x21, 0x31, &[0; 216]), V2Unsupported),
        (v2(0x21, 0x11, &block[..11]), V2ShortAddress),
        (v2(0x21, 0x21, &block), V2ShortAddress),
        (v2(0x21, 0x11, &[0; V2_PAYLOAD_BYTES_MAX + 1]), V2TooLong),
        (v2(0x20, 0x00, &[0; V2_PAYLOAD_BYTES_MAX + 1]), V2TooLong),
    ];
    for (input, expected) in cases {
        assert_eq!(parse(&input), Err(expected), "{:02x?}", &input[12..16]);
        // Every fixed-byte error is seen as soon as its byte arrives.
        if !matches!(expected, V2ShortAddress | V2Unsupported) {
            assert_eq!(parse(&input[..16]), Err(expected));
        }
    }
    // The cap itself is allowed.
    let mut at_cap = block.clone();
    at_cap.extend(tlv(0x04, &vec![0; V2_PAYLOAD_BYTES_MAX - 12 - 3]));
    let at_cap = v2(0x21, 0x11, &at_cap);
    assert_eq!(complete(&at_cap).1, HEADER_BYTES_MAX);
}

#[test]
fn errors_have_reasons() {
    for e in [ProxyError::Missing, ProxyError::V1NoCrlf, ProxyError::V2Tlv] {
        assert!(e.to_string().contains("PROXY") || e == ProxyError::Missing);
        assert!(!e.reason().is_empty());
    }
}

fn arb_header() -> impl Strategy<Value = (Vec<u8>, Header)> {
    let v4 = (
        any::<[u8; 4]>(),
        any::<[u8; 4]>(),
        any::<u16>(),
        any::<u16>(),
    );
    let v6 = (
        any::<[u8; 16]>(),
        any::<[u8; 16]>(),
        any::<u16>(),
        any::<u16>(),
    );
    let tls = proptest::option::of(any::<u8>());
    prop_oneof![
        v4.prop_map(|(s, d, sp, dp)| {
            let (s, d) = (Ipv4Addr::from(s), Ipv4Addr::from(d));
            let line = format!("PROXY TCP4 {s} {d} {sp} {dp}\r\n");
            let a = Addresses {
                source: SocketAddr::new(s.into(), sp),
                destination: SocketAddr::new(d.into(), dp),
            };
            (line.into_bytes(), v1(Version::V1, Some(a)))
        }),
        v6.prop_map(|(s, d, sp, dp)| {
            let (s, d) = (Ipv6Addr::from(s), Ipv6Addr::from(d));
            let line = format!("PROXY TCP6 {s} {d} {sp} {dp}\r\n");
            let a = Addresses {
                source: SocketAddr::new(s.into(), sp),
                destination: SocketAddr::new(d.into(), dp),
            };
            (line.into_bytes(), v1(Version::V1, Some(a)))
        }),
        (v4, tls.clone()).prop_map(|((s, d, sp, dp), ssl)| {
            let mut payload = inet_block(s, d, sp, dp);
            if let Some(client) = ssl {
                payload.extend(tlv(0x20, &[client, 0, 0, 0, 0]));
            }
            let h = Header {
                version: Version::V2,
                addresses: Some(Addresses {
                    source: SocketAddr::new(Ipv4Addr::from(s).into(), sp),
                    destination: SocketAddr::new(Ipv4Addr::from(d).into(), dp),
                }),
                client_tls: ssl.is_some_and(|c| c & 1 == 1),
            };
            (v2(0x21, 0x11, &payload), h)
        }),
        (v6, tls).prop_map(|((s, d, sp, dp), ssl)| {
            let (s, d) = (Ipv6Addr::from(s), Ipv6Addr::from(d));
            let mut payload = inet6_block(s, d, sp, dp);
            if let Some(client) = ssl {
                payload.extend(tlv(0x20, &[client, 0, 0, 0, 0]));
            }
            let h = Header {
                version: Version::V2,
                addresses: Some(Addresses {
                    source: SocketAddr::new(s.into(), sp),
                    destination: SocketAddr::new(d.into(), dp),
                }),
                client_tls: ssl.is_some_and(|c| c & 1 == 1),
            };
            (v2(0x21, 0x21, &payload), h)
        }),
    ]
}

proptest! {
    /// A valid header followed by anything: every strict prefix is Partial,
    /// the whole gives the header and stops exactly at its end.
    #[test]
    fn split_at_every_offset(
        (bytes, header) in arb_header(),
        tail in proptest::collection::vec(any::<u8>(), 0..32),
    ) {
        let mut buf = bytes.clone();
        buf.extend_from_slice(&tail);
        for k in 0..bytes.len() {
            prop_assert_eq!(parse(&buf[..k]), Ok(Status::Partial), "prefix {}", k);
        }
        for k in bytes.len()..=buf.len() {
            prop_assert_eq!(parse(&buf[..k]), Ok(Status::Complete((header, bytes.len()))));
        }
    }

    /// Arbitrary bytes after either start: a verdict, once given, never
    /// changes as more bytes arrive, and Complete lies within the buffer.
    #[test]
    fn verdicts_are_stable_as_bytes_arrive(
        start in prop_oneof![Just(V2_SIGNATURE.to_vec()), Just(b"PROXY ".to_vec()), Just(Vec::new())],
        body in proptest::collection::vec(any::<u8>(), 0..160),
    ) {
        let mut buf = start;
        buf.extend_from_slice(&body);
        let full = parse(&buf);
        if let Ok(Status::Complete((_, n))) = full {
            prop_assert!(n <= buf.len() && n <= HEADER_BYTES_MAX);
        }
        for k in 0..=buf.len() {
            match parse(&buf[..k]) {
                Ok(Status::Partial) => {}
                verdict => prop_assert_eq!(verdict, parse(&buf), "prefix {}", k),
            }
        }
    }
}
