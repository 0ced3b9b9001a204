//! The user-name check, applied to every login name before any lookup or
//! file-system access, and to every name in the passwd-file. A name that
//! fails it is treated as bad credentials, never as an error.

/// The longest user name accepted, in bytes.
pub const USERNAME_BYTES_MAX: usize = 255;

/// Whether `name` may be a user name.
///
/// Refused: empty names, names longer than [`USERNAME_BYTES_MAX`] bytes,
/// names that are not UTF-8, names holding `/`, NUL, a control character
/// (C0, DEL or C1) or white space (ASCII or Unicode), and names beginning
/// with `.` (which covers `.` and `..`). Names of the form `local@domain`
/// are fine, but each `@`-separated part must be non-empty and must not
/// begin with `.` either, because the store may turn the domain and the
/// local part into directory names.
pub fn valid_username(name: &[u8]) -> bool {
    if name.is_empty() || name.len() > USERNAME_BYTES_MAX {
        return false;
    }
    let Ok(text) = std::str::from_utf8(name) else {
        return false;
    };
    let chars_ok = text
        .chars()
        .all(|c| c != '/' && !c.is_control() && !c.is_whitespace());
    chars_ok
        && text
            .split('@')
            .all(|part| !part.is_empty() && !part.starts_with('.'))
}

/// The key a login name is looked up under: ASCII lower case, as Dovecot's
/// default `auth_username_format = %Lu` does before any passdb lookup.
pub(crate) fn lookup_key(name: &str) -> String {
    name.to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn username_table() {
        let long_ok = "a".repeat(USERNAME_BYTES_MAX);
        let too_long = "a".repeat(USERNAME_BYTES_MAX + 1);
        let table: &[(&[u8], bool)] = &[
            (b"alice", true),
            (b"alice@example.com", true),
            (b"Alice.Smith+pop@mail.example.org", true),
            (b"a.b", true),
            (b"a..b", true),
            ("jos\u{e9}@example.com".as_bytes(), true),
            (long_ok.as_bytes(), true),
            (too_long.as_bytes(), false),
            (b"", false),
            (b".", false),
            (b"..", false),
            (b".hidden", false),
            (b"a/b", false),
            (b"../etc/passwd", false),
            (b"a\0b", false),
            (b"a\nb", false),
            (b"a\rb", false),
            (b"a\tb", false),
            (b"a b", false),
            (b" alice", false),
            (b"alice ", false),
            (b"a\x7fb", false),
            (b"a\x1bb", false),
            ("a\u{85}b".as_bytes(), false),
            ("a\u{a0}b".as_bytes(), false),
            ("a\u{2028}b".as_bytes(), false),
            (b"\xff\xfe", false),
            (b"a\xc3", false),
            (b"alice@", false),
            (b"@example.com", false),
            (b"alice@.example.com", false),
            (b"alice@..", false),
            (b"alice@@example.com", false),
        ];
        for (name, want) in table {
            assert_eq!(
                valid_username(name),
                *want,
                "{:?}",
                String::from_utf8_lossy(name)
            );
        }
    }

    #[test]
    fn every_ascii_byte() {
        for b in 0u8..=127 {
            let name = [b'a', b, b'z'];
            let want = !(b == b'/' || b.is_ascii_control() || b.is_ascii_whitespace());
            assert_eq!(valid_username(&name), want, "byte {b:#04x}");
        }
    }

    #[test]
    fn lookup_key_lowercases_ascii_only() {
        assert_eq!(lookup_key("Alice@Example.COM"), "alice@example.com");
        assert_eq!(lookup_key("J\u{d3}SE"), "j\u{d3}se");
    }
}
