//! SO_REUSEPORT listeners: each shard binds its own socket to every listen
//! address, so the kernel spreads new connections across shards without a
//! shared accept queue. Port 0 is resolved by the first bind and reused by
//! the rest, so tests can ask for any free port.
#![forbid(unsafe_code)]

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
/// address with its TLS flag.
pub fn bind_all(
    addrs: &[Bound],
    shards: usize,
) -> Result<(Vec<Bound>, Vec<ShardListeners>), StartError> {
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
}
