//! Thread-per-core HTTP/1.1 servers, shaped like the product's listeners: one thread per core,
//! each with its own current-thread tokio runtime and its own SO_REUSEPORT socket on the same
//! address, so the kernel spreads connections and nothing is shared between threads.
//! Used by the null server and the receiver.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::thread::JoinHandle;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::watch;

/// Listen backlog of each socket (the product uses the same).
const LISTEN_BACKLOG: i32 = 4096;

pub type HttpResponse = Response<Full<Bytes>>;

/// A running group of server threads. Dropping it stops them.
pub struct ServerGroup {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    threads: Vec<JoinHandle<()>>,
}

impl ServerGroup {
    /// The bound address (with the port the kernel picked when asked for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, drops every connection and joins the threads.
    pub fn stop(mut self) {
        self.shutdown();
    }

    /// Blocks until the threads exit (they do only when stopped).
    pub fn join(mut self) {
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }

    fn shutdown(&mut self) {
        let _ = self.stop.send(true);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for ServerGroup {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Starts `threads` server threads on `addr`, each answering every request with `handler`.
/// With `pin`, thread `i` is pinned to core `i % cores`, as the product pins its shards.
pub fn spawn<H, F>(
    addr: SocketAddr,
    threads: usize,
    pin: bool,
    name: &str,
    handler: H,
) -> io::Result<ServerGroup>
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = HttpResponse> + Send + 'static,
{
    assert!(threads > 0, "a server needs at least one thread");
    let first = bind_reuseport(addr)?;
    let bound = first.local_addr()?;
    let mut listeners = vec![first];
    for _ in 1..threads {
        listeners.push(bind_reuseport(bound)?);
    }
    let (stop, stopped) = watch::channel(false);
    let cores = available_cores();
    let mut handles = Vec::with_capacity(threads);
    for (i, listener) in listeners.into_iter().enumerate() {
        let handler = handler.clone();
        let mut stopped = stopped.clone();
        let core = pin.then(|| cores[i % cores.len()]);
        let thread_name = format!("{name}-{i}");
        handles.push(
            std::thread::Builder::new()
                .name(thread_name.clone())
                .spawn(move || {
                    if let Some(core) = core {
                        pin_to_core(core);
                    }
                    let rt = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt,
                        Err(e) => {
                            eprintln!("{thread_name}: no runtime: {e}");
                            return;
                        }
                    };
                    rt.block_on(async move {
                        let listener = match tokio::net::TcpListener::from_std(listener) {
                            Ok(l) => l,
                            Err(e) => {
                                eprintln!("listener: {e}");
                                return;
                            }
                        };
                        loop {
                            tokio::select! {
                                _ = stopped.changed() => break,
                                accepted = listener.accept() => {
                                    let Ok((stream, _)) = accepted else { continue };
                                    let _ = stream.set_nodelay(true);
                                    let handler = handler.clone();
                                    tokio::spawn(async move {
                                        let service = service_fn(move |req| {
                                            let fut = handler(req);
                                            async move { Ok::<_, Infallible>(fut.await) }
                                        });
                                        let _ = http1::Builder::new()
                                            .keep_alive(true)
                                            .serve_connection(TokioIo::new(stream), service)
                                            .await;
                                    });
                                }
                            }
                        }
                    });
                    // Dropping the runtime here cancels every connection task.
                })?,
        );
    }
    Ok(ServerGroup {
        addr: bound,
        stop,
        threads: handles,
    })
}

/// A non-blocking listener with SO_REUSEADDR and SO_REUSEPORT.
fn bind_reuseport(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// The CPUs this process may run on.
fn available_cores() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity writes at most its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0 {
            let cores: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
                .filter(|&c| libc::CPU_ISSET(c, &set))
                .collect();
            if !cores.is_empty() {
                return cores;
            }
        }
    }
    vec![0]
}

fn pin_to_core(core: usize) {
    // SAFETY: as above; pins only the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// The number of CPUs this process may run on.
pub fn core_count() -> usize {
    available_cores().len()
}
