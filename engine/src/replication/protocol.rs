//! The replication wire protocol: one TCP connection per shard (and one for the metadata),
//! opened by the primary to the replica's `replication.listen`.
//!
//! ```text
//! preamble (plain text, before any TLS):  "HRRP" | version u8 | stream u16 LE | shards u16 LE
//! then messages, both ways:                len u32 LE | crc32 u32 LE | type u8 | fields
//! ```
//!
//! `len` counts the type byte and the fields; `crc32` (crc32fast) covers the same bytes, so a
//! damaged message is refused rather than written to the replica's log. The exchange:
//!
//! ```text
//! replica → primary  Challenge { nonce }
//! primary → replica  Hello { epoch, master_fp, auth = HMAC-SHA256(secret, nonce|stream|epoch) }
//! replica → primary  Welcome { epoch, first_offset, next_offset, last_epoch }  or  Refuse
//! primary → replica  [Truncate { to } | Reset { base }] then Records { .. } / MetaState / Ping
//! primary → replica  Trim { below }         (the primary's retention deleted what is below)
//! replica → primary  Ack { next_offset }   (everything below it is fsynced on the replica)
//! ```
//!
//! The stream id is the shard number, or [`META_STREAM`] for the metadata.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// First bytes of every replication connection.
pub const MAGIC: [u8; 4] = *b"HRRP";
/// Protocol version in the preamble.
pub const VERSION: u8 = 1;
/// Stream id of the metadata connection.
pub const META_STREAM: u16 = u16::MAX;
/// Size of the preamble.
pub const PREAMBLE_BYTES: usize = 9;
/// Largest message accepted (a batch of records, or the whole metadata state).
pub const MESSAGE_BYTES_MAX: usize = 256 << 20;

/// What a connection carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preamble {
    /// Shard number, or [`META_STREAM`].
    pub stream: u16,
    /// The sender's shard count (both nodes must have the same).
    pub shards: u16,
}

impl Preamble {
    pub fn encode(&self) -> [u8; PREAMBLE_BYTES] {
        let mut b = [0u8; PREAMBLE_BYTES];
        b[0..4].copy_from_slice(&MAGIC);
        b[4] = VERSION;
        b[5..7].copy_from_slice(&self.stream.to_le_bytes());
        b[7..9].copy_from_slice(&self.shards.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8; PREAMBLE_BYTES]) -> Result<Preamble, ProtocolError> {
        if b[0..4] != MAGIC {
            return Err(ProtocolError::Malformed(
                "not a replication connection".into(),
            ));
        }
        if b[4] != VERSION {
            return Err(ProtocolError::Malformed(format!(
                "replication protocol version {} (this node speaks {VERSION})",
                b[4]
            )));
        }
        Ok(Preamble {
            stream: u16::from_le_bytes([b[5], b[6]]),
            shards: u16::from_le_bytes([b[7], b[8]]),
        })
    }
}

/// Why a node refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefuseKind {
    /// The refusing node has seen a higher epoch: the connecting primary is stale.
    Fenced = 1,
    /// Authentication or configuration mismatch (secret, master key, shard count).
    Denied = 2,
    /// Not now (the node is changing role); try again shortly.
    Retry = 3,
}

impl RefuseKind {
    fn from_u8(b: u8) -> Option<RefuseKind> {
        match b {
            1 => Some(RefuseKind::Fenced),
            2 => Some(RefuseKind::Denied),
            3 => Some(RefuseKind::Retry),
            _ => None,
        }
    }
}

/// One log record as copied to the replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireRecord {
    pub offset: u64,
    pub epoch: u32,
    pub record_type: u8,
    pub payload: Bytes,
}

/// Bytes a record takes in a `Records` message besides its payload.
pub const RECORD_OVERHEAD_BYTES: usize = 8 + 4 + 1 + 4;

/// A protocol message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    Challenge {
        nonce: [u8; 32],
    },
    Hello {
        epoch: u32,
        master_fp: [u8; 32],
        auth: [u8; 32],
    },
    Welcome {
        /// The highest epoch the replica has seen.
        epoch: u32,
        first_offset: u64,
        next_offset: u64,
        /// Epoch of the replica's last record; `None` when its log holds none.
        last_epoch: Option<u32>,
    },
    Refuse {
        kind: RefuseKind,
        epoch: u32,
        reason: String,
    },
    Truncate {
        to: u64,
    },
    Reset {
        base: u64,
    },
    Records {
        records: Vec<WireRecord>,
    },
    Ack {
        next_offset: u64,
    },
    Ping,
    MetaState {
        state: Bytes,
    },
    /// The primary's retention deleted everything below `below`: the replica may too.
    Trim {
        below: u64,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("replication connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed replication message: {0}")]
    Malformed(String),
}

impl Msg {
    /// The type byte and fields (what `len` and `crc32` cover).
    pub fn encode_body(&self, out: &mut BytesMut) {
        match self {
            Msg::Challenge { nonce } => {
                out.put_u8(1);
                out.put_slice(nonce);
            }
            Msg::Hello {
                epoch,
                master_fp,
                auth,
            } => {
                out.put_u8(2);
                out.put_u32_le(*epoch);
                out.put_slice(master_fp);
                out.put_slice(auth);
            }
            Msg::Welcome {
                epoch,
                first_offset,
                next_offset,
                last_epoch,
            } => {
                out.put_u8(3);
                out.put_u32_le(*epoch);
                out.put_u64_le(*first_offset);
                out.put_u64_le(*next_offset);
                out.put_u8(u8::from(last_epoch.is_some()));
                out.put_u32_le(last_epoch.unwrap_or(0));
            }
            Msg::Refuse {
                kind,
                epoch,
                reason,
            } => {
                out.put_u8(4);
                out.put_u8(*kind as u8);
                out.put_u32_le(*epoch);
                out.put_slice(reason.as_bytes());
            }
            Msg::Truncate { to } => {
                out.put_u8(5);
                out.put_u64_le(*to);
            }
            Msg::Reset { base } => {
                out.put_u8(6);
                out.put_u64_le(*base);
            }
            Msg::Records { records } => {
                out.put_u8(7);
                out.put_u32_le(records.len() as u32);
                for r in records {
                    out.put_u64_le(r.offset);
                    out.put_u32_le(r.epoch);
                    out.put_u8(r.record_type);
                    out.put_u32_le(r.payload.len() as u32);
                    out.put_slice(&r.payload);
                }
            }
            Msg::Ack { next_offset } => {
                out.put_u8(8);
                out.put_u64_le(*next_offset);
            }
            Msg::Ping => out.put_u8(9),
            Msg::MetaState { state } => {
                out.put_u8(10);
                out.put_slice(state);
            }
            Msg::Trim { below } => {
                out.put_u8(11);
                out.put_u64_le(*below);
            }
        }
    }

    /// Decodes the type byte and fields. Payloads share `body`'s buffer (no copy).
    pub fn decode_body(mut body: Bytes) -> Result<Msg, ProtocolError> {
        fn need(b: &Bytes, n: usize, what: &str) -> Result<(), ProtocolError> {
            if b.remaining() < n {
                return Err(ProtocolError::Malformed(format!("{what} is cut short")));
            }
            Ok(())
        }
        need(&body, 1, "message")?;
        let kind = body.get_u8();
        let msg = match kind {
            1 => {
                need(&body, 32, "challenge")?;
                let mut nonce = [0u8; 32];
                body.copy_to_slice(&mut nonce);
                Msg::Challenge { nonce }
            }
            2 => {
                need(&body, 68, "hello")?;
                let epoch = body.get_u32_le();
                let mut master_fp = [0u8; 32];
                body.copy_to_slice(&mut master_fp);
                let mut auth = [0u8; 32];
                body.copy_to_slice(&mut auth);
                Msg::Hello {
                    epoch,
                    master_fp,
                    auth,
                }
            }
            3 => {
                need(&body, 25, "welcome")?;
                let epoch = body.get_u32_le();
                let first_offset = body.get_u64_le();
                let next_offset = body.get_u64_le();
                let has_last = body.get_u8() != 0;
                let last = body.get_u32_le();
                Msg::Welcome {
                    epoch,
                    first_offset,
                    next_offset,
                    last_epoch: has_last.then_some(last),
                }
            }
            4 => {
                need(&body, 5, "refuse")?;
                let kind = RefuseKind::from_u8(body.get_u8())
                    .ok_or_else(|| ProtocolError::Malformed("unknown refusal".into()))?;
                let epoch = body.get_u32_le();
                let reason = String::from_utf8_lossy(&body).into_owned();
                body.advance(body.remaining());
                Msg::Refuse {
                    kind,
                    epoch,
                    reason,
                }
            }
            5 => {
                need(&body, 8, "truncate")?;
                Msg::Truncate {
                    to: body.get_u64_le(),
                }
            }
            6 => {
                need(&body, 8, "reset")?;
                Msg::Reset {
                    base: body.get_u64_le(),
                }
            }
            7 => {
                need(&body, 4, "records")?;
                let n = body.get_u32_le() as usize;
                let mut records = Vec::with_capacity(n.min(1 << 16));
                for _ in 0..n {
                    need(&body, RECORD_OVERHEAD_BYTES, "record header")?;
                    let offset = body.get_u64_le();
                    let epoch = body.get_u32_le();
                    let record_type = body.get_u8();
                    let len = body.get_u32_le() as usize;
                    need(&body, len, "record payload")?;
                    let payload = body.split_to(len);
                    records.push(WireRecord {
                        offset,
                        epoch,
                        record_type,
                        payload,
                    });
                }
                for pair in records.windows(2) {
                    if pair[1].offset != pair[0].offset + 1 {
                        return Err(ProtocolError::Malformed(
                            "records are not consecutive".into(),
                        ));
                    }
                }
                Msg::Records { records }
            }
            8 => {
                need(&body, 8, "ack")?;
                Msg::Ack {
                    next_offset: body.get_u64_le(),
                }
            }
            9 => Msg::Ping,
            10 => {
                let state = body.split_to(body.remaining());
                Msg::MetaState { state }
            }
            11 => {
                need(&body, 8, "trim")?;
                Msg::Trim {
                    below: body.get_u64_le(),
                }
            }
            other => {
                return Err(ProtocolError::Malformed(format!(
                    "unknown message type {other}"
                )));
            }
        };
        if body.has_remaining() {
            return Err(ProtocolError::Malformed(format!(
                "{} trailing bytes after message type {kind}",
                body.remaining()
            )));
        }
        Ok(msg)
    }

    /// The whole message as sent: length, crc32, body.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(64);
        out.put_u64_le(0);
        self.encode_body(&mut out);
        let body_len = out.len() - 8;
        let crc = crc32fast::hash(&out[8..]);
        out[0..4].copy_from_slice(&(body_len as u32).to_le_bytes());
        out[4..8].copy_from_slice(&crc.to_le_bytes());
        out.freeze()
    }
}

/// Writes one message.
pub async fn write_msg<W: AsyncWrite + Unpin>(w: &mut W, msg: &Msg) -> Result<(), ProtocolError> {
    w.write_all(&msg.encode()).await?;
    w.flush().await?;
    Ok(())
}

/// Reads one message.
pub async fn read_msg<R: AsyncRead + Unpin>(r: &mut R) -> Result<Msg, ProtocolError> {
    let mut head = [0u8; 8];
    r.read_exact(&mut head).await?;
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    if len == 0 || len > MESSAGE_BYTES_MAX {
        return Err(ProtocolError::Malformed(format!(
            "message length {len} outside 1..={MESSAGE_BYTES_MAX}"
        )));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    if crc32fast::hash(&body) != crc {
        return Err(ProtocolError::Malformed("crc mismatch".into()));
    }
    Msg::decode_body(Bytes::from(body))
}

/// The proof a primary sends that it knows the shared secret: HMAC-SHA256 over the replica's
/// nonce, the stream and the epoch. Without a secret it is all zeros (trusted networks only).
pub fn auth_tag(secret: Option<&str>, nonce: &[u8; 32], stream: u16, epoch: u32) -> [u8; 32] {
    let Some(secret) = secret else {
        return [0u8; 32];
    };
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(b"hookrelay-replication-v1");
    mac.update(nonce);
    mac.update(&stream.to_le_bytes());
    mac.update(&epoch.to_le_bytes());
    mac.finalize().into_bytes().into()
}

/// Constant-time check of a received auth tag.
pub fn auth_ok(
    secret: Option<&str>,
    nonce: &[u8; 32],
    stream: u16,
    epoch: u32,
    tag: &[u8; 32],
) -> bool {
    use subtle::ConstantTimeEq as _;
    match secret {
        None => true,
        Some(_) => bool::from(auth_tag(secret, nonce, stream, epoch).ct_eq(tag)),
    }
}

/// A fingerprint of the master key (it seals the tenants' data keys, which the metadata carries):
/// two nodes must hold the same key, and this tells without sending it.
pub fn master_fingerprint(master: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"hookrelay-master-fingerprint-v1");
    h.update(master);
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn roundtrip(msg: Msg) {
        let wire = msg.encode();
        let len = u32::from_le_bytes(wire[0..4].try_into().unwrap()) as usize;
        assert_eq!(len, wire.len() - 8);
        let back = Msg::decode_body(wire.slice(8..)).unwrap();
        assert_eq!(back, msg);
    }

    #[test]
    fn every_message_round_trips() {
        roundtrip(Msg::Challenge { nonce: [7; 32] });
        roundtrip(Msg::Hello {
            epoch: 3,
            master_fp: [1; 32],
            auth: [2; 32],
        });
        roundtrip(Msg::Welcome {
            epoch: 4,
            first_offset: 10,
            next_offset: 99,
            last_epoch: Some(2),
        });
        roundtrip(Msg::Welcome {
            epoch: 0,
            first_offset: 0,
            next_offset: 0,
            last_epoch: None,
        });
        roundtrip(Msg::Refuse {
            kind: RefuseKind::Fenced,
            epoch: 9,
            reason: "epoch 9 > 8".into(),
        });
        roundtrip(Msg::Truncate { to: 5 });
        roundtrip(Msg::Reset { base: 1 << 40 });
        roundtrip(Msg::Ack { next_offset: 77 });
        roundtrip(Msg::Ping);
        roundtrip(Msg::MetaState {
            state: Bytes::from_static(b"{\"tenants\":{}}"),
        });
        roundtrip(Msg::Records { records: vec![] });
        roundtrip(Msg::Trim { below: 12 });
    }

    #[tokio::test]
    async fn read_refuses_a_damaged_message() {
        let mut wire = Msg::Ack { next_offset: 1 }.encode().to_vec();
        let last = wire.len() - 1;
        wire[last] ^= 0x40;
        let err = read_msg(&mut wire.as_slice()).await.unwrap_err();
        assert!(err.to_string().contains("crc mismatch"), "{err}");
    }

    #[tokio::test]
    async fn read_refuses_an_oversized_length() {
        let mut wire = vec![0u8; 8];
        wire[0..4].copy_from_slice(&(MESSAGE_BYTES_MAX as u32 + 1).to_le_bytes());
        let err = read_msg(&mut wire.as_slice()).await.unwrap_err();
        assert!(err.to_string().contains("length"), "{err}");
    }

    #[test]
    fn records_must_be_consecutive() {
        let rec = |offset| WireRecord {
            offset,
            epoch: 1,
            record_type: 1,
            payload: Bytes::from_static(b"x"),
        };
        let wire = Msg::Records {
            records: vec![rec(1), rec(3)],
        }
        .encode();
        assert!(Msg::decode_body(wire.slice(8..)).is_err());
    }

    #[test]
    fn preamble_checks_magic_and_version() {
        let p = Preamble {
            stream: META_STREAM,
            shards: 4,
        };
        assert_eq!(Preamble::decode(&p.encode()).unwrap(), p);
        let mut bad = p.encode();
        bad[4] = 2;
        assert!(Preamble::decode(&bad).is_err());
        bad = p.encode();
        bad[0] = b'G';
        assert!(Preamble::decode(&bad).is_err());
    }

    #[test]
    fn auth_needs_the_same_secret_nonce_stream_and_epoch() {
        let nonce = [9u8; 32];
        let tag = auth_tag(Some("a-long-shared-secret"), &nonce, 2, 5);
        assert!(auth_ok(Some("a-long-shared-secret"), &nonce, 2, 5, &tag));
        assert!(!auth_ok(Some("another-secret-xx"), &nonce, 2, 5, &tag));
        assert!(!auth_ok(Some("a-long-shared-secret"), &[8; 32], 2, 5, &tag));
        assert!(!auth_ok(Some("a-long-shared-secret"), &nonce, 3, 5, &tag));
        assert!(!auth_ok(Some("a-long-shared-secret"), &nonce, 2, 6, &tag));
        assert!(!auth_ok(
            Some("a-long-shared-secret"),
            &nonce,
            2,
            5,
            &[0; 32]
        ));
    }

    proptest! {
        #[test]
        fn records_round_trip(
            start in 0u64..1 << 50,
            payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 0..20),
            epoch in 0u32..10,
        ) {
            let records: Vec<WireRecord> = payloads
                .into_iter()
                .enumerate()
                .map(|(i, p)| WireRecord {
                    offset: start + i as u64,
                    epoch,
                    record_type: (i % 3) as u8 + 1,
                    payload: Bytes::from(p),
                })
                .collect();
            roundtrip(Msg::Records { records });
        }

        #[test]
        fn garbage_never_panics(body in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Msg::decode_body(Bytes::from(body));
        }
    }
}
