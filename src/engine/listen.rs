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

/// Binds `shards` sockets for each address. Returns the bound addresses (port
/// 0 resolved) and, per shard, one listener per address.
pub fn bind_all(
    addrs: &[SocketAddr],
    shards: usize,
) -> Result<(Vec<SocketAddr>, Vec<Vec<TcpListener>>), StartError> {
    let mut bound = Vec::with_capacity(addrs.len());
    let mut per_shard: Vec<Vec<TcpListener>> = (0..shards)
        .map(|_| Vec::with_capacity(addrs.len()))
        .collect();
    for &addr in addrs {
        let mut actual = addr;
        for listeners in &mut per_shard {
            let listener = bind(actual).map_err(|e| StartError::Bind(actual, e))?;
            actual = listener
                .local_addr()
                .map_err(|e| StartError::Bind(actual, e))?;
            listeners.push(listener);
        }
        bound.push(actual);
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
        let (bound, per_shard) = bind_all(&["127.0.0.1:0".parse().unwrap()], 3).unwrap();
        assert_eq!(bound.len(), 1);
        assert_ne!(bound[0].port(), 0);
        for listeners in &per_shard {
            assert_eq!(listeners[0].local_addr().unwrap(), bound[0]);
        }
    }
}
