//! Listening sockets: one per shard thread on the same address (SO_REUSEPORT), so the kernel
//! spreads connections across shards without a shared accept queue.

use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// A non-blocking listener on `addr` with SO_REUSEADDR and SO_REUSEPORT.
pub fn bind_reuseport(addr: SocketAddr, backlog: i32) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_listeners_share_a_port() {
        let a = bind_reuseport("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        let addr = a.local_addr().unwrap();
        let b = bind_reuseport(addr, 16).unwrap();
        assert_eq!(b.local_addr().unwrap(), addr);
        a.set_nonblocking(false).unwrap();
        b.set_nonblocking(false).unwrap();
        let _c = std::net::TcpStream::connect(addr).unwrap();
        // One of the two accepts the connection.
        a.set_nonblocking(true).unwrap();
        b.set_nonblocking(true).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            if a.accept().is_ok() || b.accept().is_ok() {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "no listener accepted");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}
