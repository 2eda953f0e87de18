//! The HTTP application of one shard thread: the per-connection service and the router.
//! Architecture Invariant: handlers never touch the log or a shard's state directly; they call
//! [`hookrelay_engine::shard::ShardCtx`] (data plane) and [`hookrelay_engine::meta::Meta`]
//! (control plane).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioTimer;

use hookrelay_engine::shard::ShardCtx;

use crate::balance::{MoveSignal, Moved, ShardBalance, serve_movable};
use crate::config::Config;
use crate::problem::{Code, Problem};
use crate::routes;

pub type HttpResponse = Response<Full<Bytes>>;

/// What every handler on this thread can reach.
pub struct App {
    pub shard: Rc<ShardCtx>,
    pub config: Arc<Config>,
    /// Base of absolute URLs the API hands out (`ingest_url`).
    pub public_url: String,
    /// This shard's side of the connection balancer.
    pub balance: Rc<ShardBalance>,
}

/// Accepts connections on this thread's listener, and the connections other shards hand over
/// (see [`crate::balance`]), until shutdown.
pub async fn serve(
    listener: std::net::TcpListener,
    mut moved_in: tokio::sync::mpsc::Receiver<Moved>,
    app: Rc<App>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "cannot register the listener");
            return;
        }
    };
    tokio::task::spawn_local(app.balance.clone().sample());
    let mut shutdown = app.shard.node.shutdown_signal();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    tokio::task::spawn_local(serve_connection(stream, peer, app.clone()));
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(moved) = moved_in.recv() => match tokio::net::TcpStream::from_std(moved.stream) {
                Ok(stream) => {
                    tokio::task::spawn_local(serve_connection(stream, moved.peer, app.clone()));
                }
                Err(e) => tracing::warn!(error = %e, "cannot register a handed-over connection"),
            },
            _ = shutdown.changed() => break,
        }
    }
}

/// Serves one connection until it ends or moves to another shard (then hands it over).
async fn serve_connection(mut stream: tokio::net::TcpStream, peer: SocketAddr, app: Rc<App>) {
    let _open = app.balance.connection();
    loop {
        let (to, io) = match serve_http1(stream, peer, &app).await {
            Some(moving) => moving,
            None => return,
        };
        let Ok(std_stream) = io.into_std() else {
            return;
        };
        match app.balance.send(
            to,
            Moved {
                stream: std_stream,
                peer,
            },
        ) {
            Ok(()) => return,
            // The other shard is swamped with handed-over connections: serve it here again.
            Err(back) => match tokio::net::TcpStream::from_std(back.stream) {
                Ok(s) => stream = s,
                Err(e) => {
                    tracing::warn!(error = %e, %peer, "cannot register a connection again");
                    return;
                }
            },
        }
    }
}

/// Serves HTTP/1.1 on `stream` until the connection ends (`None`), or until it reaches a point
/// between two requests where it should move to another shard: then the shard and the stream,
/// with no byte read ahead.
async fn serve_http1(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    app: &Rc<App>,
) -> Option<(usize, tokio::net::TcpStream)> {
    let signal = MoveSignal::new();
    let limits = &app.config.ingest;
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(limits.request_timeout_ms))
        .max_headers(limits.max_headers as usize)
        // hyper's read buffer bounds the request head; it cannot go below 8 KiB.
        .max_buf_size((limits.max_header_bytes as usize).max(8192));
    let service = {
        let (app, signal) = (app.clone(), signal.clone());
        service_fn(move |req: Request<Incoming>| {
            signal.on_request();
            let (app, signal) = (app.clone(), signal.clone());
            async move {
                // Only after an accepted ingest (202, or 200 for a duplicate): its body was read
                // whole, the answer is small and written in one go, and ingest is the load worth
                // spreading. An error answer may leave body bytes unread (413); hyper then
                // closes after the answer, and there is no boundary to move at.
                let ingest = is_ingest(&req);
                let response = route(&app, peer, req).await;
                if ingest
                    && response.status().is_success()
                    && !signal.is_moving()
                    && let Some(to) = app.balance.want_move()
                {
                    signal.move_after_answer(to);
                }
                Ok::<_, Infallible>(response)
            }
        })
    };
    match serve_movable(&builder, stream, service, &signal).await {
        Ok(moving) => moving,
        Err(e) => {
            tracing::debug!(error = %e, %peer, "connection ended with an error");
            None
        }
    }
}

fn is_ingest(req: &Request<Incoming>) -> bool {
    req.method() == Method::POST && req.uri().path().starts_with("/ingest/")
}

/// Dispatches a request to its handler by method and path.
pub async fn route(app: &Rc<App>, peer: SocketAddr, req: Request<Incoming>) -> HttpResponse {
    // The hot path first, without copying the path: `POST /ingest/{endpoint_id}`.
    if req.method() == Method::POST
        && let Some(endpoint_id) = req.uri().path().strip_prefix("/ingest/")
        && !endpoint_id.is_empty()
        && !endpoint_id.contains('/')
    {
        let uri = req.uri().clone();
        let endpoint_id = &uri.path()["/ingest/".len()..];
        return routes::ingest::ingest(app, peer, endpoint_id, req).await;
    }
    let path = req.uri().path().to_string();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let method = req.method().clone();
    match (&method, segments.as_slice()) {
        (&Method::POST, ["ingest", endpoint_id]) => {
            routes::ingest::ingest(app, peer, endpoint_id, req).await
        }
        (&Method::GET, ["healthz"]) => routes::health::healthz(),
        (&Method::GET, ["readyz"]) => routes::health::readyz(app),
        (&Method::GET, ["v1", "openapi.json"]) => routes::openapi::get(),
        (&Method::GET, ["metrics"]) => routes::metrics::prometheus(app).await,
        (_, ["v1", ..]) => routes::v1(app, peer, method, &segments[1..], req).await,
        (_, ["ingest", _]) | (_, ["healthz"]) | (_, ["readyz"]) | (_, ["metrics"]) => Problem::new(
            Code::MethodNotAllowed,
            format!("{method} is not allowed on {path}"),
        )
        .into_response(),
        _ => Problem::new(Code::NotFound, format!("no route for {path}")).into_response(),
    }
}
