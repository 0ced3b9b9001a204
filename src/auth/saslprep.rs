//! SASLprep (RFC 4013) of user names and passwords, as RFC 4616 (PLAIN),
//! RFC 5802 (SCRAM user names) and RFC 6856 (UTF-8 USER/PASS) ask of a
//! server, through the `stringprep` crate.
//!
//! Compatibility with stores made without it (Dovecot prepares nothing):
//! printable ASCII is left as it is (SASLprep maps it to itself), bytes
//! that are not UTF-8 (legacy 8-bit passwords) are left as they are, and so
//! is a string SASLprep refuses (a prohibited or unassigned character): the
//! passdb then compares it as sent, which can only match what was stored
//! from the same bytes. Only UTF-8 that SASLprep changes (compatibility
//! forms, non-ASCII spaces, soft hyphens, decomposed letters) is changed.

use std::borrow::Cow;

/// `bytes` prepared for comparison (see the module doc).
pub fn prepare(bytes: &[u8]) -> Cow<'_, [u8]> {
    if bytes.iter().all(|&b| (0x20..0x7f).contains(&b)) {
        return Cow::Borrowed(bytes);
    }
    let Ok(text) = std::str::from_utf8(bytes) else {
        return Cow::Borrowed(bytes);
    };
    match stringprep::saslprep(text) {
        Ok(Cow::Owned(prepared)) => Cow::Owned(prepared.into_bytes()),
        Ok(Cow::Borrowed(_)) | Err(_) => Cow::Borrowed(bytes),
    }
}

/// [`prepare`] for a name already known to be UTF-8.
pub fn prepare_str(text: &str) -> Cow<'_, str> {
    match prepare(text.as_bytes()) {
        Cow::Borrowed(_) => Cow::Borrowed(text),
        Cow::Owned(bytes) => Cow::Owned(String::from_utf8(bytes).expect("SASLprep gives UTF-8")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc4013_examples_and_compatibility() {
        let table: &[(&[u8], &[u8])] = &[
            (b"user", b"user"),
            (b"USER", b"USER"),
            (b"pass word ~!", b"pass word ~!"),
            // SOFT HYPHEN is mapped to nothing.
            ("I\u{ad}X".as_bytes(), b"IX"),
            // FEMININE ORDINAL INDICATOR → "a" (NFKC).
            ("\u{aa}".as_bytes(), b"a"),
            // ROMAN NUMERAL NINE → "IX".
            ("\u{2168}".as_bytes(), b"IX"),
            // NO-BREAK SPACE → SPACE.
            ("a\u{a0}b".as_bytes(), b"a b"),
            // Decomposed é → composed.
            ("jose\u{301}".as_bytes(), "jos\u{e9}".as_bytes()),
            // Already prepared UTF-8 stays.
            ("jos\u{e9}".as_bytes(), "jos\u{e9}".as_bytes()),
            // Prohibited (a control character) and not UTF-8: as sent.
            (b"a\x07b", b"a\x07b"),
            (b"caf\xe9", b"caf\xe9"),
        ];
        for (input, want) in table {
            assert_eq!(&*prepare(input), *want, "{input:?}");
        }
        assert_eq!(prepare_str("\u{2168}"), "IX");
        assert!(matches!(prepare_str("alice"), Cow::Borrowed(_)));
    }
}
