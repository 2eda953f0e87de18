//! Builds the bytes of one signed ingest request into a reused buffer: no allocation per
//! request once the buffer has grown.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::payload::{self, BodyTemplate};
use crate::sign::{Prepared, Signer};

/// One ingest target: the request path (`/ingest/{endpoint_id}`) and how to sign for it.
#[derive(Clone)]
pub struct Target {
    pub path: String,
    pub signer: Signer,
}

/// Everything constant about the requests of a run. Cheap to share (read only).
pub struct RequestFactory {
    targets: Vec<Target>,
    /// Per target: the request line and fixed headers, up to the signature headers.
    prefixes: Vec<Vec<u8>>,
    body: BodyTemplate,
    /// Distinguishes the event ids of two runs against the same server.
    nonce: u32,
}

/// A worker's per-second signing state, one [`Prepared`] per target.
#[derive(Default)]
pub struct SigningCache {
    second: i64,
    prepared: Vec<Prepared>,
}

impl RequestFactory {
    /// `host` is the `Host` header value (`127.0.0.1:8080`).
    pub fn new(host: &str, targets: Vec<Target>, body: BodyTemplate, nonce: u32) -> Self {
        assert!(!targets.is_empty(), "a run needs at least one target");
        let prefixes = targets
            .iter()
            .map(|t| {
                format!(
                    "POST {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: hookrelay-bench\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
                    t.path,
                    body.body_bytes()
                )
                .into_bytes()
            })
            .collect();
        Self {
            targets,
            prefixes,
            body,
            nonce,
        }
    }

    pub fn body_bytes(&self) -> usize {
        self.body.body_bytes()
    }

    /// Size of a whole request (head and body) on the wire.
    pub fn request_bytes(&self) -> usize {
        let mut buf = Vec::new();
        self.build(0, &mut SigningCache::default(), &mut buf);
        buf.len()
    }

    /// Writes request number `seq` (which picks the target round-robin and makes the event id)
    /// into `out`, replacing its contents.
    pub fn build(&self, seq: u64, cache: &mut SigningCache, out: &mut Vec<u8>) {
        let t = unix_now_s();
        if cache.second != t || cache.prepared.len() != self.targets.len() {
            cache.second = t;
            cache.prepared = self
                .targets
                .iter()
                .map(|target| target.signer.prepare(t, self.body.head()))
                .collect();
        }
        let i = (seq % self.targets.len() as u64) as usize;
        let tail = payload::tail(self.nonce, seq);
        out.clear();
        out.extend_from_slice(&self.prefixes[i]);
        self.targets[i].signer.write_headers(
            &cache.prepared[i],
            self.body.head(),
            &tail,
            payload::event_id(&tail),
            out,
        );
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(self.body.head());
        out.extend_from_slice(&tail);
    }
}

/// Unix seconds now.
pub fn unix_now_s() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A nonce for a run: differs between runs started more than a microsecond apart or by two
/// processes.
pub fn run_nonce() -> u32 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    ((nanos / 1000) as u32) ^ std::process::id().rotate_left(16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sign::Mode;

    #[test]
    fn requests_are_complete_http_with_the_declared_length() {
        let targets = vec![
            Target {
                path: "/ingest/ep_a".into(),
                signer: Signer::new(Mode::Stripe, "s").unwrap(),
            },
            Target {
                path: "/ingest/ep_b".into(),
                signer: Signer::new(Mode::Github, "s").unwrap(),
            },
        ];
        let f = RequestFactory::new("h:1", targets, BodyTemplate::new(512).unwrap(), 1);
        let mut cache = SigningCache::default();
        let mut buf = Vec::new();
        for seq in 0..4u64 {
            f.build(seq, &mut cache, &mut buf);
            let mut headers = [httparse::EMPTY_HEADER; 16];
            let mut req = httparse::Request::new(&mut headers);
            let head_len = match req.parse(&buf).unwrap() {
                httparse::Status::Complete(n) => n,
                httparse::Status::Partial => panic!("partial request"),
            };
            assert_eq!(buf.len() - head_len, 512);
            let want = if seq % 2 == 0 {
                "/ingest/ep_a"
            } else {
                "/ingest/ep_b"
            };
            assert_eq!(req.path, Some(want));
            let sig = if seq % 2 == 0 {
                "Stripe-Signature"
            } else {
                "X-Hub-Signature-256"
            };
            assert!(req.headers.iter().any(|h| h.name == sig));
        }
    }
}
