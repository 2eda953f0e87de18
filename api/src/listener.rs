//! Listening sockets for the shard threads: each shard binds its own socket on the same address
//! with SO_REUSEPORT, so the kernel spreads new connections across shards (by a hash of the
//! connection's addresses) with no shared accept queue and no cross-core hand-off.
//!
//! Not here: TCP_NODELAY, which the accept loop sets on each accepted stream.

use std::io;
use std::net::{SocketAddr, TcpListener};

use socket2::{Domain, Protocol, Socket, Type};

/// Binds a non-blocking TCP listener on `addr` with SO_REUSEADDR and SO_REUSEPORT and starts
/// listening with `backlog`. Several such listeners (of the same user) may share one address.
/// The socket is close-on-exec.
pub fn bind_reuseport(addr: SocketAddr, backlog: i32) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // SO_REUSEADDR: a restart may bind while the previous process's connections sit in
    // TIME_WAIT. SO_REUSEPORT: every shard binds the same address.
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    Ok(socket.into())
}

/// Binds `count` listeners sharing one address, one per shard. With port 0 the first listener
/// picks a free port and the others join it (binding port 0 `count` times would give `count`
/// different ports).
pub fn bind_reuseport_group(
    addr: SocketAddr,
    count: usize,
    backlog: i32,
) -> io::Result<Vec<TcpListener>> {
    assert!(count > 0, "a listener group needs at least one listener");
    let first = bind_reuseport(addr, backlog)?;
    let bound = first.local_addr()?;
    let mut listeners = Vec::with_capacity(count);
    listeners.push(first);
    for _ in 1..count {
        listeners.push(bind_reuseport(bound, backlog)?);
    }
    Ok(listeners)
}

#[cfg(test)]
mod tests {
    use std::io::{Read as _, Write as _};
    use std::net::TcpStream;
    use std::time::{Duration, Instant};

    use super::*;

    /// Accepts on every listener until `total` connections came in; returns the count per
    /// listener.
    fn accept_all(listeners: &[TcpListener], total: usize) -> Vec<usize> {
        let mut counts = vec![0; listeners.len()];
        let deadline = Instant::now() + Duration::from_secs(10);
        while counts.iter().sum::<usize>() < total {
            assert!(
                Instant::now() < deadline,
                "only {counts:?} of {total} connections accepted"
            );
            let mut progressed = false;
            for (i, listener) in listeners.iter().enumerate() {
                match listener.accept() {
                    Ok((mut stream, _)) => {
                        counts[i] += 1;
                        progressed = true;
                        stream.set_nonblocking(false).unwrap();
                        stream.write_all(&[i as u8]).unwrap();
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => panic!("accept: {e}"),
                }
            }
            if !progressed {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        counts
    }

    #[test]
    fn two_listeners_share_a_port_and_both_accept() {
        let listeners = bind_reuseport_group("127.0.0.1:0".parse().unwrap(), 2, 128).unwrap();
        let addr = listeners[0].local_addr().unwrap();
        assert_ne!(addr.port(), 0);
        assert_eq!(listeners[1].local_addr().unwrap(), addr);

        // 64 connections from different source ports: the kernel's hash puts all of them on one
        // listener with probability 2^-63.
        const CONNECTIONS: usize = 64;
        let clients: Vec<TcpStream> = (0..CONNECTIONS)
            .map(|_| TcpStream::connect(addr).unwrap())
            .collect();
        let counts = accept_all(&listeners, CONNECTIONS);
        assert_eq!(counts.iter().sum::<usize>(), CONNECTIONS);
        assert!(
            counts.iter().all(|&n| n > 0),
            "the kernel did not spread connections: {counts:?}"
        );
        // Each client is served by the listener that accepted it.
        for mut client in clients {
            let mut byte = [0u8];
            client.read_exact(&mut byte).unwrap();
            assert!((byte[0] as usize) < listeners.len());
        }
    }

    #[test]
    fn listeners_are_nonblocking() {
        let listener = bind_reuseport("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        let err = listener.accept().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn a_port_held_without_reuseport_is_refused() {
        let plain = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = plain.local_addr().unwrap();
        assert_eq!(
            bind_reuseport(addr, 16).unwrap_err().kind(),
            io::ErrorKind::AddrInUse
        );
    }
}
