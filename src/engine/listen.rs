//! SO_REUSEPORT listeners: each shard binds its own socket to every listen
//! address, so the kernel spreads new connections across shards without a
//! shared accept queue. Port 0 is resolved by the first bind and reused by
//! the rest, so tests can ask for any free port.
//!
//! SO_REUSEPORT would also let a second process of the same user bind the
//! same address and silently take about half of the new connections (three
//! forgotten instances once shared one port without a word). So before
//! binding, each address is probed with a plain socket (SO_REUSEADDR, no
//! SO_REUSEPORT): if anything listens there, or on a wildcard covering it,
//! that bind fails and so does the start, with a message saying why. Only a
//! deliberate takeover (a zero-downtime restart: the new process binds
//! beside the old one, which then drains) skips the probe.
#![forbid(unsafe_code)]

use std::io;
use std::net::{SocketAddr, TcpListener};

use socket2::{Domain, Protocol, Socket, Type};

use super::StartError;

/// The accept backlog per socket; the kernel caps it at net.core.somaxconn.
const BACKLOG: i32 = 4096;

/// A bound listen address: where, and whether it speaks implicit TLS.
pub type Bound = (SocketAddr, bool);

/// One shard's listeners, each with its implicit-TLS flag.
pub type ShardListeners = Vec<(TcpListener, bool)>;

/// Binds `shards` sockets for each address (`true`: implicit TLS). Returns
/// the bound addresses (port 0 resolved) and, per shard, one listener per
/// address with its TLS flag. Fails when another process already listens
/// on one of the addresses (see the module docs).
pub fn bind_all(
    addrs: &[Bound],
    shards: usize,
) -> Result<(Vec<Bound>, Vec<ShardListeners>), StartError> {
    bind_all_with(addrs, shards, false)
}

/// [`bind_all`]; with `takeover`, binds beside a process that already
/// listens (a zero-downtime restart, asked for explicitly).
pub fn bind_all_with(
    addrs: &[Bound],
    shards: usize,
    takeover: bool,
) -> Result<(Vec<Bound>, Vec<ShardListeners>), StartError> {
    if !takeover {
        for &(addr, _) in addrs {
            probe_free(addr).map_err(|e| StartError::Bind(addr, e))?;
        }
    }
    let mut bound = Vec::with_capacity(addrs.len());
    let mut per_shard: Vec<ShardListeners> = (0..shards)
        .map(|_| Vec::with_capacity(addrs.len()))
        .collect();
    for &(addr, tls) in addrs {
        let mut actual = addr;
        for listeners in &mut per_shard {
            let listener = bind(actual).map_err(|e| StartError::Bind(actual, e))?;
            actual = listener
                .local_addr()
                .map_err(|e| StartError::Bind(actual, e))?;
            listeners.push((listener, tls));
        }
        bound.push((actual, tls));
    }
    Ok((bound, per_shard))
}

/// Fails with `AddrInUse` and an explanation when something listens on
/// `addr` already. Port 0 is always free (the kernel picks one).
fn probe_free(addr: SocketAddr) -> io::Result<()> {
    if addr.port() == 0 {
        return Ok(());
    }
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // SO_REUSEADDR: a port with only TIME_WAIT leftovers of a previous run
    // is free; a port with a listener (ours with SO_REUSEPORT or anyone's)
    // is not.
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    match socket.bind(&addr.into()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "another process already listens on this address (a second shardpop?); \
             stop it, or pass --takeover to start beside it for a zero-downtime restart",
        )),
        Err(e) => Err(e),
    }
    // The probe socket closes here, before the real binds.
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    // Accepted sockets inherit TCP_NODELAY from the listener on Linux, so no
    // engine spends a setsockopt per connection on it.
    socket.set_tcp_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_zero_is_shared_by_every_shard() {
        let (bound, per_shard) = bind_all(
            &[
                ("127.0.0.1:0".parse().unwrap(), false),
                ("127.0.0.1:0".parse().unwrap(), true),
            ],
            3,
        )
        .unwrap();
        assert_eq!(bound.len(), 2);
        assert_ne!(bound[0].0.port(), 0);
        assert_ne!(bound[0].0, bound[1].0);
        for listeners in &per_shard {
            assert_eq!(
                (listeners[0].0.local_addr().unwrap(), listeners[0].1),
                bound[0]
            );
            assert_eq!(
                (listeners[1].0.local_addr().unwrap(), listeners[1].1),
                bound[1]
            );
        }
    }

    #[test]
    fn accepted_sockets_inherit_nodelay_from_the_listener() {
        let (bound, per_shard) = bind_all(&[("127.0.0.1:0".parse().unwrap(), false)], 1).unwrap();
        let _client = std::net::TcpStream::connect(bound[0].0).unwrap();
        let (listener, _) = &per_shard[0][0];
        listener.set_nonblocking(false).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        assert!(accepted.nodelay().unwrap());
    }

    #[test]
    fn an_address_in_use_by_another_listener_is_refused() {
        let (bound, _first) = bind_all(&[("127.0.0.1:0".parse().unwrap(), false)], 2).unwrap();
        let taken = bound[0].0;
        let err = bind_all(&[(taken, false)], 2).unwrap_err();
        let StartError::Bind(addr, e) = &err else {
            panic!("{err}");
        };
        assert_eq!(*addr, taken);
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
        assert!(
            err.to_string().contains("another process already listens"),
            "{err}"
        );
        assert!(err.to_string().contains("--takeover"), "{err}");
        // Asked for explicitly, the new sockets join the old ones.
        let (again, per_shard) = bind_all_with(&[(taken, false)], 2, true).unwrap();
        assert_eq!(again[0].0, taken);
        assert_eq!(per_shard.len(), 2);
    }

    #[test]
    fn a_wildcard_listener_covers_specific_addresses() {
        let (bound, _first) = bind_all(&[("0.0.0.0:0".parse().unwrap(), false)], 1).unwrap();
        let port = bound[0].0.port();
        let loopback = SocketAddr::from(([127, 0, 0, 1], port));
        assert!(bind_all(&[(loopback, false)], 1).is_err());
    }

    #[test]
    fn a_closed_listener_leaves_the_port_free() {
        // One shard: with two, the kernel may queue the connection on the
        // other socket and this accept would wait forever.
        let (bound, first) = bind_all(&[("127.0.0.1:0".parse().unwrap(), false)], 1).unwrap();
        // A connection the server side closes first leaves TIME_WAIT on the
        // port; that is not a listener and must not block a restart.
        let client = std::net::TcpStream::connect(bound[0].0).unwrap();
        let (listener, _) = &first[0][0];
        listener.set_nonblocking(false).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        drop(accepted);
        drop(first);
        drop(client);
        bind_all(&bound, 2).unwrap();
    }
}
