//! The null server: a bare hyper server that reads the request body and answers 202 with a
//! small JSON, thread-per-core like the product. What it reaches with the bench's load on this
//! machine is the ceiling the product's ingest is compared with (SPEC.md "Numbers").

use std::io;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::Response;
use hyper::header::{CONTENT_TYPE, HeaderValue};

use crate::listen::{self, ServerGroup};

/// The same shape (and about the same size) as the product's ingest answer.
const ANSWER: &[u8] =
    br#"{"delivery_id":"dl_00000000000000000000000000","status":"queued","duplicate":false}"#;

/// Starts the null server on `addr` with `threads` threads.
pub fn start(addr: SocketAddr, threads: usize, pin: bool) -> io::Result<ServerGroup> {
    listen::spawn(
        addr,
        threads,
        pin,
        "null-server",
        |req: hyper::Request<hyper::body::Incoming>| async move {
            let status = match req.into_body().collect().await {
                Ok(_) => hyper::StatusCode::ACCEPTED,
                Err(_) => hyper::StatusCode::BAD_REQUEST,
            };
            let mut resp = Response::new(Full::new(Bytes::from_static(ANSWER)));
            *resp.status_mut() = status;
            resp.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            resp
        },
    )
}
