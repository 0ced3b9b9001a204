//! Dovecot compatibility for UIDLs: reading `dovecot-uidlist` and formatting
//! `pop3_uidl_format`, so POP3 clients that leave mail on the server see the
//! same UIDLs after the switch and download nothing twice.
//!
//! `dovecot-uidlist` (version 3, what Dovecot has written since 1.0):
//!
//! ```text
//! 3 V1655390361 N3 Gbe88b9389940ab62f7580b00ce89bbd1
//! 1 :1655390418.M100238P743770.host,S=3734
//! 2 W3800 P0000000145a4c3f0 O2 :1655390420.M2P7.host,S=3700,W=3800
//! ```
//!
//! The header holds the UIDVALIDITY (`V`); each record a UID, optional
//! extension fields (`P`: a POP3 UIDL saved by a migration, `O`: a POP3 order),
//! then `:` and the base file name. shardpop only reads the file; it never
//! writes it (Dovecot keeps it when it also serves IMAP on the tree).
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::Path;

/// The file's name inside a Maildir.
pub const UIDLIST_FILE: &str = "dovecot-uidlist";

/// One record of the uidlist.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The IMAP UID.
    pub uid: u32,
    /// A POP3 UIDL stored by a migration (`P` field); wins over the format.
    pub pop3_uidl: Option<Box<str>>,
    /// A POP3 order stored by a migration (`O` field).
    pub pop3_order: Option<u32>,
    /// The message's GUID (`G` field, kept by dsync); Dovecot's `%g` is the
    /// base file name without one.
    pub guid: Option<Box<str>>,
}

/// A parsed `dovecot-uidlist`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Uidlist {
    /// UIDVALIDITY.
    pub uid_validity: u32,
    /// Base file name → record.
    pub records: HashMap<Box<str>, Record>,
}

impl Uidlist {
    /// Reads `dir/dovecot-uidlist`; `Ok(None)` when there is none. A file of
    /// another version, or a broken one, is logged and treated as absent:
    /// UIDLs then fall back to base names, which is safe (never a collision).
    pub fn read(dir: &Path) -> io::Result<Option<Uidlist>> {
        let text = match std::fs::read_to_string(dir.join(UIDLIST_FILE)) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                tracing::warn!(dir = %dir.display(), "dovecot-uidlist is not UTF-8; ignoring it");
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        match Uidlist::parse(&text) {
            Some(list) => Ok(Some(list)),
            None => {
                tracing::warn!(dir = %dir.display(), "dovecot-uidlist has an unknown format; ignoring it");
                Ok(None)
            }
        }
    }

    /// The UID source of a Maildir: `dovecot-uidlist` when there is one
    /// (what the last server wrote wins, and Dovecot's migration script
    /// writes its conversions there), else Courier's files
    /// ([`super::courier`]); `Ok(None)` when there is neither.
    pub fn read_any(dir: &Path) -> io::Result<Option<Uidlist>> {
        match Uidlist::read(dir)? {
            Some(list) => Ok(Some(list)),
            None if dir.join(UIDLIST_FILE).exists() => Ok(None),
            None => super::courier::read(dir),
        }
    }

    /// Parses the text of a version 3 uidlist.
    pub fn parse(text: &str) -> Option<Uidlist> {
        let mut lines = text.lines();
        let mut header = lines.next()?.split(' ');
        if header.next()? != "3" {
            return None;
        }
        let uid_validity = header.find_map(|f| f.strip_prefix('V'))?.parse().ok()?;
        let mut records = HashMap::new();
        for line in lines.filter(|l| !l.is_empty()) {
            let (fields, name) = line.split_once(" :")?;
            let mut fields = fields.split(' ');
            let uid = fields.next()?.parse().ok()?;
            let mut record = Record {
                uid,
                pop3_uidl: None,
                pop3_order: None,
                guid: None,
            };
            for field in fields {
                match field.as_bytes().first() {
                    Some(b'P') => record.pop3_uidl = Some(field[1..].into()),
                    Some(b'O') => record.pop3_order = field[1..].parse().ok(),
                    // An empty GUID is corrupt: Dovecot then uses the name.
                    Some(b'G') if field.len() > 1 => record.guid = Some(field[1..].into()),
                    _ => {}
                }
            }
            // Records name the base file name; tolerate a stray ":2," suffix.
            let base = name.split(':').next().unwrap_or(name);
            records.insert(base.into(), record);
        }
        Some(Uidlist {
            uid_validity,
            records,
        })
    }
}

/// A `pop3_uidl_format` template: `%f` (base file name), `%g` (the GUID
/// the uidlist keeps for the message, else its base file name, as Dovecot's
/// Maildir storage has it), `%u` (UID), `%v` (UIDVALIDITY), each optionally with a zero-padded width and `X` for
/// lowercase hex as Dovecot prints it (`%08Xu%08Xv`, Dovecot's default), and `%%`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UidlFormat {
    parts: Vec<Part>,
    /// [`UidlFormat::fingerprint`], computed once: every login compares it
    /// with the index's.
    fingerprint: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Literal(String),
    FileName,
    Guid,
    Number {
        var: NumberVar,
        width: usize,
        hex: Option<bool>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NumberVar {
    Uid,
    UidValidity,
}

/// A template that cannot be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FormatError(pub String);

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pop3_uidl_format: {}", self.0)
    }
}

impl std::error::Error for FormatError {}

impl UidlFormat {
    /// Parses a template.
    pub fn parse(template: &str) -> Result<UidlFormat, FormatError> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = template.chars().peekable();
        while let Some(c) = chars.next() {
            if c != '%' {
                literal.push(c);
                continue;
            }
            let mut width = String::new();
            while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                width.push(*d);
                chars.next();
            }
            let hex = match chars.peek() {
                Some('X') => Some(true),
                Some('x') => Some(false),
                _ => None,
            };
            if hex.is_some() {
                chars.next();
            }
            let part = match chars.next() {
                Some('%') if width.is_empty() && hex.is_none() => {
                    literal.push('%');
                    continue;
                }
                Some('f') if width.is_empty() && hex.is_none() => Part::FileName,
                Some('g') if width.is_empty() && hex.is_none() => Part::Guid,
                Some('u') => Part::Number {
                    var: NumberVar::Uid,
                    width: width.parse().unwrap_or(0),
                    hex,
                },
                Some('v') => Part::Number {
                    var: NumberVar::UidValidity,
                    width: width.parse().unwrap_or(0),
                    hex,
                },
                other => {
                    return Err(FormatError(format!(
                        "unsupported variable %{width}{}",
                        other.unwrap_or(' ')
                    )));
                }
            };
            if !literal.is_empty() {
                parts.push(Part::Literal(std::mem::take(&mut literal)));
            }
            parts.push(part);
        }
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        if parts.is_empty() {
            return Err(FormatError("empty template".into()));
        }
        // The rules version: bumped when UIDLs are made differently for the
        // same template (2: mail no imported list knows avoids imported
        // forms; 3: a bare saved `P` is the base name, and a message with
        // no saved `O` follows those with one, as Dovecot reads them),
        // so an index made by an older build has its UIDLs made again (its
        // sizes are kept).
        const RULES: u32 = 3;
        let fingerprint = crc32fast::hash(format!("{RULES} {parts:?}").as_bytes());
        Ok(UidlFormat { parts, fingerprint })
    }

    /// A checksum of the parsed template, stored in the mailbox index: an
    /// index built with another template is not used.
    pub fn fingerprint(&self) -> u32 {
        self.fingerprint
    }

    /// True when the template needs the uidlist (uses `%u` or `%v`).
    pub fn needs_uidlist(&self) -> bool {
        self.parts.iter().any(|p| matches!(p, Part::Number { .. }))
    }

    /// The UIDL of a message, or `None` when the template needs a UID the
    /// message does not have (it is not in the uidlist).
    pub fn render(
        &self,
        base: &str,
        record: Option<&Record>,
        uid_validity: Option<u32>,
    ) -> Option<String> {
        let uid = record.map(|r| r.uid);
        let mut out = String::with_capacity(24);
        for part in &self.parts {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::FileName => out.push_str(base),
                Part::Guid => out.push_str(record.and_then(|r| r.guid.as_deref()).unwrap_or(base)),
                Part::Number { var, width, hex } => {
                    let n = match var {
                        NumberVar::Uid => uid?,
                        NumberVar::UidValidity => uid_validity?,
                    };
                    let w = *width;
                    // Dovecot's `X` modifier prints lowercase hex (checked
                    // against Dovecot 2.3.19's UIDL output).
                    match hex {
                        Some(_) => out.push_str(&format!("{n:0w$x}")),
                        None => out.push_str(&format!("{n:0w$}")),
                    }
                }
            }
        }
        Some(out)
    }
}

impl Default for UidlFormat {
    /// Dovecot's default, so a tree Dovecot served keeps its UIDLs.
    fn default() -> Self {
        UidlFormat::parse("%08Xu%08Xv").expect("the default template parses")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(uid: u32) -> Record {
        Record {
            uid,
            pop3_uidl: None,
            pop3_order: None,
            guid: None,
        }
    }

    // crc32 of the templates' `Debug` text, as every earlier build computed them.
    const FP_DEFAULT: u32 = 3_130_459_524;
    const FP_FILE_NAME: u32 = 2_148_480_256;

    const LIST: &str = "3 V1655390361 N4 Gbe88b9389940ab62f7580b00ce89bbd1\n\
        1 :1655390418.M100238P743770.host,S=3734\n\
        2 W3800 :1655390420.M2P7.host,S=3700,W=3800\n\
        3 P0000abcd O7 :1655390421.M3P7.host:2,S\n";

    #[test]
    fn parses_version_3() {
        let list = Uidlist::parse(LIST).unwrap();
        assert_eq!(list.uid_validity, 1_655_390_361);
        assert_eq!(list.records.len(), 3);
        assert_eq!(list.records["1655390418.M100238P743770.host,S=3734"].uid, 1);
        assert_eq!(
            list.records["1655390421.M3P7.host"],
            Record {
                uid: 3,
                pop3_uidl: Some("0000abcd".into()),
                pop3_order: Some(7),
                guid: None,
            }
        );
    }

    #[test]
    fn refuses_other_versions_and_garbage() {
        assert_eq!(Uidlist::parse("1 1655390361 4\n1 file\n"), None);
        assert_eq!(Uidlist::parse("3 N4\n"), None);
        assert_eq!(Uidlist::parse("3 V1 N2\nx :name\n"), None);
        assert_eq!(Uidlist::parse(""), None);
    }

    #[test]
    fn formats_like_dovecot() {
        let default = UidlFormat::default();
        assert!(default.needs_uidlist());
        assert_eq!(
            default
                .render("b", Some(&rec(1)), Some(1_655_390_361))
                .unwrap(),
            "0000000162ab4099"
        );
        assert_eq!(default.render("b", None, Some(1)), None);
        let f = UidlFormat::parse("%f").unwrap();
        assert!(!f.needs_uidlist());
        assert_eq!(f.render("1.M2.h,S=3", None, None).unwrap(), "1.M2.h,S=3");
        let f = UidlFormat::parse("%v.%u-%%").unwrap();
        assert_eq!(f.render("b", Some(&rec(42)), Some(7)).unwrap(), "7.42-%");
        let f = UidlFormat::parse("%08xu").unwrap();
        assert_eq!(f.render("b", Some(&rec(255)), None).unwrap(), "000000ff");
        // Cyrus's uidl_format values: cyrus, uidonly, courier.
        let cyrus = UidlFormat::parse("%v.%u").unwrap();
        assert_eq!(
            cyrus
                .render("b", Some(&rec(42)), Some(1_600_000_000))
                .unwrap(),
            "1600000000.42"
        );
        let uid_only = UidlFormat::parse("%u").unwrap();
        assert_eq!(uid_only.render("b", Some(&rec(42)), Some(7)).unwrap(), "42");
        let courier = UidlFormat::parse("%v-%u").unwrap();
        assert_eq!(
            courier.render("b", Some(&rec(42)), Some(7)).unwrap(),
            "7-42"
        );
        assert!(UidlFormat::parse("%m").is_err());
        assert!(UidlFormat::parse("").is_err());
    }

    #[test]
    fn guid_is_the_uidlists_else_the_base_name() {
        let list = Uidlist::parse(
            "3 V1 N3 G3085f01b7f11094c501100008c4a11c1\n\
             1 G0a1b2c3d4e5f :1.M1.h\n2 G :2.M2.h\n3 W9 :3.M3.h\n",
        )
        .unwrap();
        let g = UidlFormat::parse("%g").unwrap();
        assert!(!g.needs_uidlist());
        let uidl = |base: &str| g.render(base, list.records.get(base), Some(1)).unwrap();
        assert_eq!(uidl("1.M1.h"), "0a1b2c3d4e5f");
        // An empty G is corrupt (Dovecot clears it): the name, as without one.
        assert_eq!(uidl("2.M2.h"), "2.M2.h");
        assert_eq!(uidl("3.M3.h"), "3.M3.h");
        assert_eq!(g.render("4.M4.h", None, None).unwrap(), "4.M4.h");
        assert!(UidlFormat::parse("%08g").is_err());
    }

    #[test]
    fn fingerprints_stay_what_existing_indexes_hold() {
        // Computed once at parse time; the values must not move by accident,
        // or every index on disk would be rebuilt for nothing. They moved
        // on purpose with the rules versions 2 (imported UIDL forms) and 3
        // (a bare saved `P`).
        assert_eq!(UidlFormat::default().fingerprint(), FP_DEFAULT);
        assert_eq!(UidlFormat::parse("%f").unwrap().fingerprint(), FP_FILE_NAME);
        assert_ne!(FP_DEFAULT, FP_FILE_NAME);
    }
}
