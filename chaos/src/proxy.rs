//! A TCP forwarder the suite controls, put in front of a replication listener so a scenario can
//! break the link between two nodes without touching either process.
//!
//! [`Proxy::cut`] closes every live connection (with a reset) and closes each new one as soon as
//! it is accepted; [`Proxy::blackhole`] keeps connections open but forwards nothing (a silent
//! partition: the sender only notices by its own timeouts); [`Proxy::heal`] forwards again
//! (connections held by a blackhole resume where they stopped). Bounded: at most
//! [`CONNECTIONS_MAX`] connections, [`BUFFER_BYTES`] held per direction.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// Open connections beyond this are closed at once.
pub const CONNECTIONS_MAX: usize = 1024;
/// Bytes read per direction before they are written on.
const BUFFER_BYTES: usize = 64 << 10;
/// How long connecting to the target may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// What the proxy does with traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Forward both ways.
    Open,
    /// Close live connections with a reset; accept and close new ones at once.
    Cut,
    /// Keep connections (old and new) open and forward nothing until the mode changes.
    Blackhole,
}

struct Counters {
    accepted: AtomicU64,
    refused: AtomicU64,
    bytes: AtomicU64,
}

/// A running proxy; stops (closing every connection) when dropped.
pub struct Proxy {
    addr: SocketAddr,
    mode: watch::Sender<Mode>,
    counters: Arc<Counters>,
    task: JoinHandle<()>,
}

impl Proxy {
    /// Listens on 127.0.0.1 (a free port) and forwards to `target`.
    pub async fn start(target: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (mode, _) = watch::channel(Mode::Open);
        let counters = Arc::new(Counters {
            accepted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
        });
        let task = tokio::spawn(accept_loop(
            listener,
            target,
            mode.clone(),
            counters.clone(),
        ));
        Ok(Self {
            addr,
            mode,
            counters,
            task,
        })
    }

    /// Where to connect instead of the target.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn cut(&self) {
        self.mode.send_replace(Mode::Cut);
    }

    pub fn blackhole(&self) {
        self.mode.send_replace(Mode::Blackhole);
    }

    pub fn heal(&self) {
        self.mode.send_replace(Mode::Open);
    }

    /// Connections accepted and forwarded, connections closed at once by a cut, bytes forwarded.
    pub fn counts(&self) -> (u64, u64, u64) {
        (
            self.counters.accepted.load(Ordering::SeqCst),
            self.counters.refused.load(Ordering::SeqCst),
            self.counters.bytes.load(Ordering::SeqCst),
        )
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    mode: watch::Sender<Mode>,
    counters: Arc<Counters>,
) {
    // Owning the connection tasks here means aborting this task aborts (closes) them all.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                if *mode.borrow() == Mode::Cut || connections.len() >= CONNECTIONS_MAX {
                    counters.refused.fetch_add(1, Ordering::SeqCst);
                    reset(&client);
                    continue;
                }
                counters.accepted.fetch_add(1, Ordering::SeqCst);
                let rx = mode.subscribe();
                let counters = counters.clone();
                connections.spawn(async move {
                    let Ok(Ok(server)) =
                        tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target)).await
                    else {
                        reset(&client);
                        return;
                    };
                    forward(client, server, rx, counters).await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Linger 0: dropping the socket then sends a reset, as a link that dies does to the sender's
/// next write.
fn reset(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

async fn forward(
    client: TcpStream,
    server: TcpStream,
    mode: watch::Receiver<Mode>,
    counters: Arc<Counters>,
) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    reset(&client);
    reset(&server);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    // Either direction ending (EOF, error, cut) ends both: the halves drop here, which closes
    // both sockets with a reset.
    tokio::select! {
        _ = pump(client_read, server_write, mode.clone(), counters.clone()) => {}
        _ = pump(server_read, client_write, mode, counters) => {}
    }
}

/// Copies `from` to `to` while the mode allows; returns on EOF, an error or a cut.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
    counters: Arc<Counters>,
) {
    let mut buf = vec![0u8; BUFFER_BYTES];
    loop {
        // Read only while open: a blackhole leaves bytes in the kernel, so TCP backpressure
        // stalls the sender as a silent link would.
        if !wait_open(&mut mode).await {
            return;
        }
        let n = tokio::select! {
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            changed = mode.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
        };
        // Bytes read just before a blackhole are held, not dropped; before a cut, dropped
        // with the connection.
        if !wait_open(&mut mode).await {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
        counters.bytes.fetch_add(n as u64, Ordering::SeqCst);
    }
}

/// Waits while the mode is [`Mode::Blackhole`]; `false` on a cut (or the proxy going away).
async fn wait_open(mode: &mut watch::Receiver<Mode>) -> bool {
    loop {
        let current = *mode.borrow_and_update();
        match current {
            Mode::Open => return true,
            Mode::Cut => return false,
            Mode::Blackhole => {
                if mode.changed().await.is_err() {
                    return false;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    loop {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                if s.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        addr
    }

    async fn roundtrip(s: &mut TcpStream, msg: &[u8]) -> std::io::Result<Vec<u8>> {
        s.write_all(msg).await?;
        let mut got = vec![0u8; msg.len()];
        s.read_exact(&mut got).await?;
        Ok(got)
    }

    #[tokio::test]
    async fn forwards_cuts_and_heals() {
        let proxy = Proxy::start(echo_server().await).await.unwrap();
        let mut a = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(roundtrip(&mut a, b"hello").await.unwrap(), b"hello");

        proxy.cut();
        // The live connection is closed: a read sees EOF or a reset.
        let mut buf = [0u8; 8];
        let r = tokio::time::timeout(Duration::from_secs(5), a.read(&mut buf))
            .await
            .expect("the cut closes the connection");
        assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
        // A new connection is closed at once.
        let mut b = TcpStream::connect(proxy.addr()).await.unwrap();
        let r = tokio::time::timeout(Duration::from_secs(5), roundtrip(&mut b, b"x"))
            .await
            .expect("a connection during a cut is closed");
        assert!(r.is_err(), "{r:?}");

        proxy.heal();
        let mut c = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(roundtrip(&mut c, b"again").await.unwrap(), b"again");
    }

    #[tokio::test]
    async fn blackhole_stalls_then_resumes() {
        let proxy = Proxy::start(echo_server().await).await.unwrap();
        let mut a = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(roundtrip(&mut a, b"one").await.unwrap(), b"one");
        proxy.blackhole();
        a.write_all(b"two").await.unwrap();
        let mut buf = [0u8; 3];
        let stalled =
            tokio::time::timeout(Duration::from_millis(300), a.read_exact(&mut buf)).await;
        assert!(stalled.is_err(), "nothing crosses a blackhole");
        proxy.heal();
        tokio::time::timeout(Duration::from_secs(5), a.read_exact(&mut buf))
            .await
            .expect("held bytes flow after the heal")
            .unwrap();
        assert_eq!(&buf, b"two");
    }
}
