//! A TCP forwarder a test controls, put in front of a replication listener to break the link
//! between two nodes: [`Proxy::cut`] resets every live connection and every new one at once;
//! [`Proxy::heal`] forwards again. (The chaos suite has a richer one with a silent mode; the
//! harness links nothing but the contract, so this is its own small copy.)

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// Open connections beyond this are reset at once.
pub const CONNECTIONS_MAX: usize = 256;
/// Bytes read per direction before they are written on.
const BUFFER_BYTES: usize = 64 << 10;
/// How long connecting to the target may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A running proxy; stops (closing every connection) when dropped.
pub struct Proxy {
    addr: SocketAddr,
    cut: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Proxy {
    /// Listens on 127.0.0.1 (a free port) and forwards to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the proxy");
        let addr = listener.local_addr().expect("the proxy's address");
        let (cut, _) = watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, target, cut.clone()));
        Self { addr, cut, task }
    }

    /// Where to connect instead of the target.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    pub fn heal(&self) {
        self.cut.send_replace(false);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, target: SocketAddr, cut: watch::Sender<bool>) {
    // Owning the connection tasks here means aborting this task closes them all.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                reset_on_close(&client);
                if *cut.borrow() || connections.len() >= CONNECTIONS_MAX {
                    continue;
                }
                let rx = cut.subscribe();
                connections.spawn(async move {
                    let Ok(Ok(server)) =
                        tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target)).await
                    else {
                        return;
                    };
                    reset_on_close(&server);
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    tokio::select! {
                        _ = pump(client_read, server_write, rx.clone()) => {}
                        _ = pump(server_read, client_write, rx) => {}
                    }
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Linger 0: closing the socket sends a reset, as a link that dies does to the next write.
// The deprecation is about a linger time blocking the dropping thread; a zero linger never
// blocks (the kernel discards the send buffer and resets at once).
#[allow(deprecated)]
fn reset_on_close(stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_linger(Some(Duration::ZERO));
}

/// Copies `from` to `to` until EOF, an error or a cut.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut cut: watch::Receiver<bool>) {
    let mut buf = vec![0u8; BUFFER_BYTES];
    loop {
        if *cut.borrow_and_update() {
            return;
        }
        tokio::select! {
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if *cut.borrow() || to.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            },
            changed = cut.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}
