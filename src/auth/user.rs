//! What a successful login hands the engine: the user, their home and the
//! passwd-file's extra fields. No password or hash is ever in here.

use std::net::IpAddr;
use std::path::PathBuf;

/// A user who has just proved who they are.
#[derive(Clone, Debug)]
pub struct UserEntry {
    /// The user name as looked up (the login, lower-cased).
    pub user: String,
    /// The passwd-file's home field, not %-expanded (as in Dovecot).
    pub home: Option<PathBuf>,
    /// The extra fields in file order, values %-expanded for this user.
    /// Keys keep their prefix: the mail location is `userdb_mail`.
    pub extra: Vec<(String, String)>,
}

impl UserEntry {
    /// The value of the first extra field named `key` (`""` for a bare
    /// flag such as `nodelay`), or `None` when it is absent.
    pub fn extra(&self, key: &str) -> Option<&str> {
        self.extra
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Dovecot's `allow_nets`: whether a login from `peer` is allowed.
    /// `None` is a connection without an IP address (Dovecot's `local`).
    /// Without the field every peer is allowed; with it, only the listed
    /// addresses and networks (`10.0.0.0/8,::1,local`), and an entry that
    /// does not parse allows nothing (fail closed). IPv4-mapped IPv6 peers
    /// are matched as IPv4.
    pub fn allows_peer(&self, peer: Option<IpAddr>) -> bool {
        let Some(nets) = self.extra("allow_nets") else {
            return true;
        };
        let peer = peer.map(|ip| ip.to_canonical());
        nets.split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .any(|net| match (net, peer) {
                ("local", None) => true,
                ("local", Some(_)) | (_, None) => false,
                (net, Some(ip)) => net_contains(net, ip).unwrap_or(false),
            })
    }
}

/// Whether `net` (`addr` or `addr/bits`, host bits allowed as in Dovecot)
/// holds `ip`; `None` if `net` does not parse.
fn net_contains(net: &str, ip: IpAddr) -> Option<bool> {
    let net = match net.parse::<ipnet::IpNet>() {
        Ok(net) => net,
        Err(_) => ipnet::IpNet::from(net.parse::<IpAddr>().ok()?),
    };
    let canonical = match net {
        ipnet::IpNet::V6(v6) => match v6.addr().to_ipv4_mapped() {
            Some(v4) if v6.prefix_len() >= 96 => {
                ipnet::IpNet::new(v4.into(), v6.prefix_len() - 96).ok()?
            }
            _ => net,
        },
        v4 => v4,
    };
    Some(canonical.contains(&ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(extra: &[(&str, &str)]) -> UserEntry {
        UserEntry {
            user: "alice".to_owned(),
            home: None,
            extra: extra
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn extra_finds_the_first_value() {
        let u = user(&[
            ("userdb_mail", "maildir:/x"),
            ("nodelay", ""),
            ("userdb_mail", "second"),
        ]);
        assert_eq!(u.extra("userdb_mail"), Some("maildir:/x"));
        assert_eq!(u.extra("nodelay"), Some(""));
        assert_eq!(u.extra("userdb"), None);
    }

    #[test]
    fn allow_nets_table() {
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        let table: &[(&str, Option<IpAddr>, bool)] = &[
            ("127.0.0.0/8,192.168.0.0/16,1.2.3.4", ip("127.1.2.3"), true),
            (
                "127.0.0.0/8,192.168.0.0/16,1.2.3.4",
                ip("192.168.200.1"),
                true,
            ),
            ("127.0.0.0/8,192.168.0.0/16,1.2.3.4", ip("1.2.3.4"), true),
            ("127.0.0.0/8,192.168.0.0/16,1.2.3.4", ip("1.2.3.5"), false),
            ("127.0.0.0/8", ip("::ffff:127.0.0.1"), true),
            (
                "::1,2001:abcd:abcd::0:0/80",
                ip("2001:abcd:abcd::1:2"),
                true,
            ),
            ("::1,2001:abcd:abcd::0:0/80", ip("2001:abcd:abce::1"), false),
            ("::1", ip("::1"), true),
            ("0.0.0.0/0", ip("8.8.8.8"), true),
            ("10.0.0.0/8", ip("::1"), false),
            ("local", None, true),
            ("local", ip("127.0.0.1"), false),
            ("127.0.0.1", None, false),
            ("not-an-ip", ip("127.0.0.1"), false),
            ("10.0.0.0/33", ip("10.0.0.1"), false),
            ("10.0.0.0/x", ip("10.0.0.1"), false),
            ("", ip("10.0.0.1"), false),
        ];
        for (nets, peer, want) in table {
            let u = user(&[("allow_nets", nets)]);
            assert_eq!(u.allows_peer(*peer), *want, "{nets} {peer:?}");
        }
        assert!(user(&[]).allows_peer(ip("203.0.113.9")));
        assert!(user(&[]).allows_peer(None));
    }
}
