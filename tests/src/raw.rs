//! A raw HTTP/1.1 client over TCP, for what a well-behaved client library hides: uploading an
//! oversized body slowly while reading the response concurrently, and telling a clean answer
//! from a connection reset.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Upper bound on the whole exchange.
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(30);

/// Responses larger than this are an error.
pub const RESPONSE_BYTES_MAX: usize = 1 << 20;

/// How the upload frames its body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// `Content-Length: <total>` announced up front.
    ContentLength,
    /// `Transfer-Encoding: chunked`, so the server only learns the size by counting.
    Chunked,
}

/// A slow upload of `total_bytes` in `chunk_bytes` pieces with `pause` between them.
#[derive(Clone, Debug)]
pub struct SlowUpload {
    pub path: String,
    pub total_bytes: usize,
    pub chunk_bytes: usize,
    pub pause: Duration,
    pub framing: Framing,
    pub headers: Vec<(String, String)>,
}

impl SlowUpload {
    /// A JSON body of `total_bytes` to `/ingest/{endpoint_id}`, sent in 32 KiB pieces 20 ms apart
    /// (a 1 MB body takes ~0.6 s: ample time for an early answer, with pauses where the socket
    /// is empty).
    pub fn json_ingest(endpoint_id: &str, total_bytes: usize, framing: Framing) -> SlowUpload {
        SlowUpload {
            path: format!("/ingest/{endpoint_id}"),
            total_bytes,
            chunk_bytes: 32 * 1024,
            pause: Duration::from_millis(20),
            framing,
            headers: vec![("Content-Type".into(), "application/json".into())],
        }
    }
}

/// What came back.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Body bytes the client had written when the response was complete.
    pub body_bytes_sent: usize,
    /// Whether the client had finished its upload when the response was complete.
    pub upload_finished: bool,
}

impl RawResponse {
    /// The same response as [`crate::http::Response`], for the shared assertions.
    pub fn to_response(&self) -> crate::http::Response {
        let mut headers = hyper::HeaderMap::new();
        for (name, value) in &self.headers {
            if let (Ok(name), Ok(value)) = (
                hyper::header::HeaderName::from_bytes(name.as_bytes()),
                hyper::header::HeaderValue::from_str(value),
            ) {
                headers.append(name, value);
            }
        }
        crate::http::Response {
            status: self.status,
            headers,
            body: bytes::Bytes::from(self.body.clone()),
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Uploads while reading. Returns the response once it is complete (headers and the body its
/// framing announces), or an error if the connection was reset or closed before that.
pub async fn slow_upload(addr: SocketAddr, upload: &SlowUpload) -> anyhow::Result<RawResponse> {
    tokio::time::timeout(EXCHANGE_TIMEOUT, exchange(addr, upload))
        .await
        .map_err(|_| anyhow!("no complete response within {EXCHANGE_TIMEOUT:?}"))?
}

async fn exchange(addr: SocketAddr, upload: &SlowUpload) -> anyhow::Result<RawResponse> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    let (mut reader, mut writer) = stream.into_split();

    let mut head = format!("POST {} HTTP/1.1\r\nHost: {addr}\r\n", upload.path);
    match upload.framing {
        Framing::ContentLength => {
            head.push_str(&format!("Content-Length: {}\r\n", upload.total_bytes))
        }
        Framing::Chunked => head.push_str("Transfer-Encoding: chunked\r\n"),
    }
    for (name, value) in &upload.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");

    let sent = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(AtomicBool::new(false));
    let upload_task = {
        let (sent, finished, upload) = (sent.clone(), finished.clone(), upload.clone());
        tokio::spawn(async move {
            // Write errors end the upload quietly: the reader decides whether the exchange worked.
            if writer.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            let chunk = vec![b'x'; upload.chunk_bytes.max(1)];
            let mut remaining = upload.total_bytes;
            while remaining > 0 {
                let n = remaining.min(chunk.len());
                let written = match upload.framing {
                    Framing::ContentLength => writer.write_all(&chunk[..n]).await,
                    Framing::Chunked => {
                        let mut frame = format!("{n:x}\r\n").into_bytes();
                        frame.extend_from_slice(&chunk[..n]);
                        frame.extend_from_slice(b"\r\n");
                        writer.write_all(&frame).await
                    }
                };
                if written.is_err() {
                    return;
                }
                remaining -= n;
                sent.fetch_add(n, Ordering::SeqCst);
                if remaining > 0 {
                    tokio::time::sleep(upload.pause).await;
                }
            }
            if upload.framing == Framing::Chunked && writer.write_all(b"0\r\n\r\n").await.is_err() {
                return;
            }
            finished.store(true, Ordering::SeqCst);
            // Keep the write half open (no FIN) so the server sees a client still connected.
            tokio::time::sleep(EXCHANGE_TIMEOUT).await;
        })
    };

    let response = read_response(&mut reader).await;
    let body_bytes_sent = sent.load(Ordering::SeqCst);
    let upload_finished = finished.load(Ordering::SeqCst);
    upload_task.abort();
    let (status, headers, body) = response?;
    Ok(RawResponse {
        status,
        headers,
        body,
        body_bytes_sent,
        upload_finished,
    })
}

type Parsed = (u16, Vec<(String, String)>, Vec<u8>);

async fn read_response(reader: &mut (impl AsyncReadExt + Unpin)) -> anyhow::Result<Parsed> {
    let mut buf: Vec<u8> = Vec::new();
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        read_more(reader, &mut buf, "the response head").await?;
    };
    let head = std::str::from_utf8(&buf[..head_end]).context("response head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let mut body = buf.split_off(head_end);
    if let Some(length) = header("content-length") {
        let length: usize = length.parse().context("bad content-length")?;
        if length > RESPONSE_BYTES_MAX {
            bail!("response body of {length} bytes is over the bound");
        }
        while body.len() < length {
            read_more(reader, &mut body, "the response body").await?;
        }
        body.truncate(length);
    } else if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        body = read_chunked(reader, body).await?;
    } else {
        // Close-delimited: read to EOF; a reset here is still a reset.
        loop {
            let mut chunk = [0u8; 8192];
            let n = reader
                .read(&mut chunk)
                .await
                .context("reading a close-delimited body")?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
            if body.len() > RESPONSE_BYTES_MAX {
                bail!("response body over the bound");
            }
        }
    }
    Ok((status, headers, body))
}

async fn read_chunked(
    reader: &mut (impl AsyncReadExt + Unpin),
    mut raw: Vec<u8>,
) -> anyhow::Result<Vec<u8>> {
    let mut body = Vec::new();
    let mut pos = 0;
    loop {
        let line_end = loop {
            if let Some(i) = find(&raw[pos..], b"\r\n") {
                break pos + i;
            }
            read_more(reader, &mut raw, "a chunk size").await?;
        };
        let size_text = std::str::from_utf8(&raw[pos..line_end]).context("chunk size")?;
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .with_context(|| format!("bad chunk size {size_text:?}"))?;
        pos = line_end + 2;
        if size == 0 {
            return Ok(body);
        }
        while raw.len() < pos + size + 2 {
            read_more(reader, &mut raw, "a chunk").await?;
        }
        body.extend_from_slice(&raw[pos..pos + size]);
        pos += size + 2;
        if body.len() > RESPONSE_BYTES_MAX {
            bail!("response body over the bound");
        }
    }
}

async fn read_more(
    reader: &mut (impl AsyncReadExt + Unpin),
    buf: &mut Vec<u8>,
    what: &str,
) -> anyhow::Result<()> {
    if buf.len() > RESPONSE_BYTES_MAX {
        bail!("response over the bound while reading {what}");
    }
    let mut chunk = [0u8; 8192];
    let n = reader.read(&mut chunk).await.with_context(|| {
        format!(
            "connection failed while reading {what} (after {} bytes)",
            buf.len()
        )
    })?;
    if n == 0 {
        bail!(
            "connection closed while reading {what} (after {} bytes)",
            buf.len()
        );
    }
    buf.extend_from_slice(&chunk[..n]);
    Ok(())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::receiver::{Receiver, Script, Step};

    fn upload(framing: Framing, total_bytes: usize) -> SlowUpload {
        SlowUpload {
            path: "/up".into(),
            total_bytes,
            chunk_bytes: 256,
            pause: Duration::from_millis(1),
            framing,
            headers: vec![("X-Test".into(), "1".into())],
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn complete_upload_gets_the_response() {
        for framing in [Framing::ContentLength, Framing::Chunked] {
            let receiver =
                Receiver::start(Script::always(Step::status(202).body("accepted"))).await;
            let response = slow_upload(receiver.addr(), &upload(framing, 2000))
                .await
                .unwrap();
            assert_eq!(response.status, 202);
            assert_eq!(response.body, b"accepted");
            let got = receiver.wait_for(1, Duration::from_secs(5)).await;
            assert_eq!(got[0].body.len(), 2000, "{framing:?}");
            assert_eq!(got[0].header("x-test"), Some("1"));
        }
    }

    /// A server that answers 413 after reading only the request head and then drains, or, with
    /// `reset`, closes with RST instead of answering.
    async fn early_answer_server(reset: bool) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buf = Vec::new();
            while find(&buf, b"\r\n\r\n").is_none() {
                let mut chunk = [0u8; 4096];
                let n = stream.read(&mut chunk).await.unwrap();
                if n == 0 {
                    return;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            if reset {
                // SO_LINGER 0: close() sends RST, the failure the contract forbids. Deprecated
                // because a non-zero linger blocks on drop; a zero one resets at once.
                #[allow(deprecated)]
                stream.set_linger(Some(Duration::ZERO)).unwrap();
                drop(stream);
                return;
            }
            let body = b"{\"code\":\"payload_too_large\"}";
            let head = format!(
                "HTTP/1.1 413 Payload Too Large\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            stream.write_all(head.as_bytes()).await.unwrap();
            stream.write_all(body).await.unwrap();
            // Drain what the client keeps sending, as a graceful server does.
            let mut sink = [0u8; 65536];
            while let Ok(n) = stream.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
        });
        addr
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn early_answer_is_read_while_still_sending() {
        let addr = early_answer_server(false).await;
        let mut slow = upload(Framing::ContentLength, 2 << 20);
        slow.chunk_bytes = 16 * 1024;
        let response = slow_upload(addr, &slow).await.unwrap();
        assert_eq!(response.status, 413);
        assert_eq!(response.body, b"{\"code\":\"payload_too_large\"}");
        assert!(!response.upload_finished);
        assert!(response.body_bytes_sent < 2 << 20);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reset_is_an_error() {
        let addr = early_answer_server(true).await;
        let error = slow_upload(addr, &upload(Framing::Chunked, 1 << 20))
            .await
            .unwrap_err();
        assert!(
            format!("{error:#}").contains("while reading the response head"),
            "{error:#}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn refused_connection_is_an_error() {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        assert!(
            slow_upload(addr, &upload(Framing::Chunked, 10))
                .await
                .is_err()
        );
    }
}
