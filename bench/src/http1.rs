//! A minimal HTTP/1.1 keep-alive client for the load generator's hot path: the request is one
//! prebuilt buffer, the response is parsed in place with httparse. One request in flight per
//! connection (no pipelining), as webhook senders do.
//!
//! Not here: the management API calls, which use hyper's client (`mgmt.rs`).

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// Bound on a response's head (status line and headers).
const HEAD_BYTES_MAX: usize = 64 << 10;
/// Bound on a response's body: ingest answers are tiny; this only stops a runaway server.
const BODY_BYTES_MAX: usize = 16 << 20;
/// Headers parsed per response.
const HEADERS_MAX: usize = 32;

/// One keep-alive connection.
pub struct Conn {
    stream: TcpStream,
    /// Bytes read from the socket and not consumed yet.
    buf: Vec<u8>,
    /// The last response's (decoded) body.
    body: Vec<u8>,
}

/// What a round trip returned. The body is in [`Conn::body`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// The server asked to close, or the body ran to the end of the stream: reconnect.
    pub close: bool,
}

enum Framing {
    Length(usize),
    Chunked,
    UntilClose,
}

impl Conn {
    pub async fn connect(addr: SocketAddr) -> io::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            buf: Vec::with_capacity(4096),
            body: Vec::with_capacity(256),
        })
    }

    /// The body of the last response.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// Sends `request` (a complete HTTP/1.1 request) and reads the response.
    pub async fn round_trip(&mut self, request: &[u8]) -> io::Result<Response> {
        self.stream.write_all(request).await?;
        self.read_response().await
    }

    async fn fill(&mut self) -> io::Result<usize> {
        if self.buf.capacity() - self.buf.len() < 2048 {
            self.buf.reserve(4096);
        }
        let n = self.stream.read_buf(&mut self.buf).await?;
        Ok(n)
    }

    async fn read_response(&mut self) -> io::Result<Response> {
        loop {
            // Parse the head; 1xx answers are skipped.
            let (status, head_len, framing, close) = loop {
                let parsed = {
                    let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
                    let mut resp = httparse::Response::new(&mut headers);
                    match resp.parse(&self.buf) {
                        Ok(httparse::Status::Complete(head_len)) => {
                            Some(head_info(&resp, head_len)?)
                        }
                        Ok(httparse::Status::Partial) => None,
                        Err(e) => return Err(invalid(format!("bad response head: {e}"))),
                    }
                };
                if let Some(p) = parsed {
                    break p;
                }
                if self.buf.len() > HEAD_BYTES_MAX {
                    return Err(invalid("response head too large"));
                }
                if self.fill().await? == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed before a response",
                    ));
                }
            };
            if (100..200).contains(&status) {
                self.buf.drain(..head_len);
                continue;
            }
            let framing = if status == 204 || status == 304 {
                Framing::Length(0)
            } else {
                framing
            };
            let close = match framing {
                Framing::Length(n) => {
                    if n > BODY_BYTES_MAX {
                        return Err(invalid("response body too large"));
                    }
                    while self.buf.len() < head_len + n {
                        if self.fill().await? == 0 {
                            return Err(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                "truncated body",
                            ));
                        }
                    }
                    self.body.clear();
                    self.body
                        .extend_from_slice(&self.buf[head_len..head_len + n]);
                    self.buf.drain(..head_len + n);
                    close
                }
                Framing::Chunked => {
                    self.buf.drain(..head_len);
                    self.read_chunked().await?;
                    close
                }
                Framing::UntilClose => {
                    while self.fill().await? > 0 {
                        if self.buf.len() > head_len + BODY_BYTES_MAX {
                            return Err(invalid("response body too large"));
                        }
                    }
                    self.body.clear();
                    self.body.extend_from_slice(&self.buf[head_len..]);
                    self.buf.clear();
                    true
                }
            };
            return Ok(Response { status, close });
        }
    }

    /// Decodes a chunked body from the front of `buf` into `body`.
    async fn read_chunked(&mut self) -> io::Result<()> {
        self.body.clear();
        let mut pos = 0;
        loop {
            match httparse::parse_chunk_size(&self.buf[pos..]) {
                Ok(httparse::Status::Complete((used, size))) => {
                    let size = usize::try_from(size).map_err(|_| invalid("chunk too large"))?;
                    if self.body.len() + size > BODY_BYTES_MAX {
                        return Err(invalid("response body too large"));
                    }
                    let start = pos + used;
                    if size == 0 {
                        // Trailers (none expected) end with an empty line.
                        loop {
                            if let Some(end) = find(&self.buf[start..], b"\r\n") {
                                if end == 0 {
                                    self.buf.drain(..start + 2);
                                    return Ok(());
                                }
                                // Skip a trailer line.
                                self.buf.drain(start..start + end + 2);
                                continue;
                            }
                            if self.fill().await? == 0 {
                                return Err(io::Error::new(
                                    io::ErrorKind::UnexpectedEof,
                                    "truncated chunked body",
                                ));
                            }
                        }
                    }
                    while self.buf.len() < start + size + 2 {
                        if self.fill().await? == 0 {
                            return Err(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                "truncated chunk",
                            ));
                        }
                    }
                    self.body.extend_from_slice(&self.buf[start..start + size]);
                    pos = start + size + 2;
                }
                Ok(httparse::Status::Partial) => {
                    if self.fill().await? == 0 {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "truncated chunk size",
                        ));
                    }
                }
                Err(_) => return Err(invalid("bad chunk size")),
            }
        }
    }
}

fn head_info(
    resp: &httparse::Response<'_, '_>,
    head_len: usize,
) -> io::Result<(u16, usize, Framing, bool)> {
    let status = resp.code.ok_or_else(|| invalid("no status code"))?;
    let mut framing = Framing::UntilClose;
    let mut close = resp.version == Some(0);
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or_else(|| invalid("bad content-length"))?;
            framing = Framing::Length(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            if contains_token(h.value, b"chunked") {
                framing = Framing::Chunked;
            }
        } else if h.name.eq_ignore_ascii_case("connection") {
            if contains_token(h.value, b"close") {
                close = true;
            } else if contains_token(h.value, b"keep-alive") {
                close = false;
            }
        }
    }
    Ok((status, head_len, framing, close))
}

fn contains_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// The `delivery_id` of an ingest answer (`{"delivery_id":"dl_..."...}`), without a JSON parse.
pub fn delivery_id(body: &[u8]) -> Option<&str> {
    let key = b"\"delivery_id\"";
    let at = find(body, key)? + key.len();
    let rest = &body[at..];
    let open = rest.iter().position(|&b| b == b'"')?;
    // Only whitespace and the colon may sit between the key and the value.
    if !rest[..open]
        .iter()
        .all(|&b| b == b':' || b.is_ascii_whitespace())
    {
        return None;
    }
    let value = &rest[open + 1..];
    let close = value.iter().position(|&b| b == b'"')?;
    std::str::from_utf8(&value[..close]).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[test]
    fn delivery_ids_are_found_in_answers() {
        assert_eq!(
            delivery_id(br#"{"delivery_id":"dl_01ABC","status":"queued","duplicate":false}"#),
            Some("dl_01ABC")
        );
        assert_eq!(
            delivery_id(br#"{ "status":"queued", "delivery_id" : "dl_x" }"#),
            Some("dl_x")
        );
        assert_eq!(delivery_id(br#"{"type":"x"}"#), None);
    }

    /// Serves canned responses, one per request read, in order.
    async fn canned(responses: Vec<&'static [u8]>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            for r in responses {
                let _ = s.read(&mut buf).await.unwrap();
                // Split the answer in two writes to exercise partial reads.
                let (a, b) = r.split_at(r.len() / 2);
                s.write_all(a).await.unwrap();
                s.flush().await.unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                s.write_all(b).await.unwrap();
            }
        });
        addr
    }

    #[tokio::test]
    async fn reads_length_chunked_and_continue_answers_on_one_connection() {
        let addr = canned(vec![
            b"HTTP/1.1 202 Accepted\r\ncontent-length: 20\r\n\r\n{\"delivery_id\":\"d1\"}",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\n\r\n",
            b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\ncontent-length: 2\r\n\r\nno",
        ])
        .await;
        let mut c = Conn::connect(addr).await.unwrap();
        let r = c.round_trip(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        assert_eq!(
            r,
            Response {
                status: 202,
                close: false
            }
        );
        assert_eq!(delivery_id(c.body()), Some("d1"));
        let r = c.round_trip(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(c.body(), b"hello world");
        let r = c.round_trip(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        assert_eq!(r.status, 204);
        assert!(c.body().is_empty());
        let r = c.round_trip(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        assert_eq!(
            r,
            Response {
                status: 503,
                close: true
            }
        );
    }
}
