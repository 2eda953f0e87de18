//! The engine's log records and their binary encoding.
//!
//! The log stores opaque payloads tagged with a record type byte; this module gives those bytes
//! their meaning. Every payload starts with a format version byte so records can evolve.
//! Encoding is little-endian, length-prefixed, and decoding is bounded: a length that runs past
//! the payload is an error, never a panic.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Record type of [`Ingested`].
pub const TYPE_INGESTED: u8 = 1;
/// Record type of [`Attempted`].
pub const TYPE_ATTEMPTED: u8 = 2;
/// Record type of [`DeadLettered`].
pub const TYPE_DEAD_LETTERED: u8 = 3;

/// Payload format version of records whose fields are all in the clear.
const VERSION: u8 = 1;
/// Version of an `Ingested` record whose headers and body are sealed under the tenant's data key
/// (see [`crate::seal`]); everything else stays readable for recovery and indexes.
const VERSION_SEALED: u8 = 2;
/// Most headers one ingested record may carry (the API enforces its own, lower limit).
pub const HEADERS_MAX: usize = 256;

/// Final and non-final states of a delivery, as stored in records and the state table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Status {
    Queued = 1,
    Success = 2,
    Failed = 3,
    Exhausted = 4,
}

impl Status {
    pub fn from_u8(v: u8) -> Option<Status> {
        match v {
            1 => Some(Status::Queued),
            2 => Some(Status::Success),
            3 => Some(Status::Failed),
            4 => Some(Status::Exhausted),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Success => "success",
            Status::Failed => "failed",
            Status::Exhausted => "exhausted",
        }
    }
    pub fn parse(s: &str) -> Option<Status> {
        match s {
            "queued" => Some(Status::Queued),
            "success" => Some(Status::Success),
            "failed" => Some(Status::Failed),
            "exhausted" => Some(Status::Exhausted),
            _ => None,
        }
    }
    pub fn is_final(self) -> bool {
        self != Status::Queued
    }
}

/// A delivery accepted by ingest: everything needed to forward it, byte for byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ingested {
    pub seq: u64,
    pub delivery_id: String,
    pub tenant_id: String,
    pub endpoint_id: String,
    pub received_at_ms: u64,
    pub idempotency_key: String,
    pub body_hash: u64,
    pub replay_of: Option<String>,
    /// Headers as received from the sender (lower-case names), in arrival order. Empty while
    /// the record is sealed.
    pub headers: Vec<(String, Bytes)>,
    /// Empty while the record is sealed.
    pub body: Bytes,
    /// Generation of the tenant data key the payload is sealed under (0: not sealed).
    pub key_generation: u32,
    /// `nonce || ciphertext` of headers and body, until [`Ingested::unseal`].
    pub sealed: Option<Bytes>,
}

/// The outcome of one attempt, and the delivery's state after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempted {
    pub seq: u64,
    /// Attempt number, starting at 1.
    pub n: u32,
    pub at_ms: u64,
    pub status_code: Option<u16>,
    pub error: Option<String>,
    pub latency_ms: u64,
    /// The delivery's status after this attempt.
    pub status_after: Status,
    /// When the next attempt is due (only when `status_after` is queued).
    pub next_due_ms: u64,
    /// Log offset of the previous record about this delivery (its history chain).
    pub prev_offset: u64,
}

/// The delivery's DLQ object has been stored durably under `key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLettered {
    pub seq: u64,
    pub key: String,
    pub at_ms: u64,
    pub prev_offset: u64,
}

/// A record that cannot be decoded.
#[derive(Debug, thiserror::Error)]
#[error("bad record payload: {0}")]
pub struct DecodeError(&'static str);

impl Ingested {
    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(128 + self.body.len() + 64 * self.headers.len());
        b.put_u8(VERSION);
        b.put_u64_le(self.seq);
        put_str(&mut b, &self.delivery_id);
        put_str(&mut b, &self.tenant_id);
        put_str(&mut b, &self.endpoint_id);
        b.put_u64_le(self.received_at_ms);
        put_str(&mut b, &self.idempotency_key);
        b.put_u64_le(self.body_hash);
        put_str(&mut b, self.replay_of.as_deref().unwrap_or(""));
        self.put_payload(&mut b);
        b.freeze()
    }

    /// Like [`Ingested::encode`], with headers and body sealed under `key` (generation `generation`
    /// of the tenant's data key), bound to the delivery id.
    pub fn encode_sealed(&self, generation: u32, key: &crate::seal::SecretKey) -> Bytes {
        assert!(generation > 0, "generation 0 means not sealed");
        let mut inner = BytesMut::with_capacity(16 + self.body.len() + 64 * self.headers.len());
        self.put_payload(&mut inner);
        let sealed = key.seal(&inner, self.delivery_id.as_bytes());
        let mut b = BytesMut::with_capacity(160 + sealed.len());
        b.put_u8(VERSION_SEALED);
        b.put_u64_le(self.seq);
        put_str(&mut b, &self.delivery_id);
        put_str(&mut b, &self.tenant_id);
        put_str(&mut b, &self.endpoint_id);
        b.put_u64_le(self.received_at_ms);
        put_str(&mut b, &self.idempotency_key);
        b.put_u64_le(self.body_hash);
        put_str(&mut b, self.replay_of.as_deref().unwrap_or(""));
        b.put_u32_le(generation);
        put_bytes(&mut b, &sealed);
        b.freeze()
    }

    fn put_payload(&self, b: &mut BytesMut) {
        assert!(self.headers.len() <= HEADERS_MAX);
        b.put_u16_le(self.headers.len() as u16);
        for (name, value) in &self.headers {
            put_str(b, name);
            put_bytes(b, value);
        }
        put_bytes(b, &self.body);
    }

    fn get_payload(p: &mut Bytes) -> Result<(Vec<(String, Bytes)>, Bytes), DecodeError> {
        let count = get_u16(p)? as usize;
        if count > HEADERS_MAX {
            return Err(DecodeError("too many headers"));
        }
        let mut headers = Vec::with_capacity(count);
        for _ in 0..count {
            let name = get_str(p)?;
            let value = get_bytes(p)?;
            headers.push((name, value));
        }
        let body = get_bytes(p)?;
        Ok((headers, body))
    }

    /// True while headers and body are still sealed.
    pub fn is_sealed(&self) -> bool {
        self.sealed.is_some()
    }

    /// Opens the sealed headers and body with the tenant's data key of `key_generation`.
    pub fn unseal(&mut self, key: &crate::seal::SecretKey) -> Result<(), DecodeError> {
        let Some(sealed) = self.sealed.take() else {
            return Ok(());
        };
        let plain = key
            .open(&sealed, self.delivery_id.as_bytes())
            .map_err(|_| DecodeError("sealed payload does not open with this key"))?;
        let mut p = Bytes::from(plain);
        let (headers, body) = Self::get_payload(&mut p)?;
        self.headers = headers;
        self.body = body;
        Ok(())
    }

    pub fn decode(mut p: Bytes) -> Result<Ingested, DecodeError> {
        let sealed_format = match get_u8(&mut p)? {
            VERSION => false,
            VERSION_SEALED => true,
            _ => return Err(DecodeError("unknown payload version")),
        };
        let seq = get_u64(&mut p)?;
        let delivery_id = get_str(&mut p)?;
        let tenant_id = get_str(&mut p)?;
        let endpoint_id = get_str(&mut p)?;
        let received_at_ms = get_u64(&mut p)?;
        let idempotency_key = get_str(&mut p)?;
        let body_hash = get_u64(&mut p)?;
        let replay_of = Some(get_str(&mut p)?).filter(|s| !s.is_empty());
        let (headers, body, key_generation, sealed) = if sealed_format {
            let generation = get_u32(&mut p)?;
            (
                Vec::new(),
                Bytes::new(),
                generation,
                Some(get_bytes(&mut p)?),
            )
        } else {
            let (headers, body) = Self::get_payload(&mut p)?;
            (headers, body, 0, None)
        };
        Ok(Ingested {
            seq,
            delivery_id,
            tenant_id,
            endpoint_id,
            received_at_ms,
            idempotency_key,
            body_hash,
            replay_of,
            headers,
            body,
            key_generation,
            sealed,
        })
    }
}

impl Attempted {
    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(64);
        b.put_u8(VERSION);
        b.put_u64_le(self.seq);
        b.put_u32_le(self.n);
        b.put_u64_le(self.at_ms);
        b.put_u16_le(self.status_code.unwrap_or(0));
        put_str(&mut b, self.error.as_deref().unwrap_or(""));
        b.put_u64_le(self.latency_ms);
        b.put_u8(self.status_after as u8);
        b.put_u64_le(self.next_due_ms);
        b.put_u64_le(self.prev_offset);
        b.freeze()
    }

    pub fn decode(mut p: Bytes) -> Result<Attempted, DecodeError> {
        version(&mut p)?;
        let seq = get_u64(&mut p)?;
        let n = get_u32(&mut p)?;
        let at_ms = get_u64(&mut p)?;
        let status_code = Some(get_u16(&mut p)?).filter(|c| *c != 0);
        let error = Some(get_str(&mut p)?).filter(|s| !s.is_empty());
        let latency_ms = get_u64(&mut p)?;
        let status_after = Status::from_u8(get_u8(&mut p)?).ok_or(DecodeError("unknown status"))?;
        let next_due_ms = get_u64(&mut p)?;
        let prev_offset = get_u64(&mut p)?;
        Ok(Attempted {
            seq,
            n,
            at_ms,
            status_code,
            error,
            latency_ms,
            status_after,
            next_due_ms,
            prev_offset,
        })
    }
}

impl DeadLettered {
    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(96);
        b.put_u8(VERSION);
        b.put_u64_le(self.seq);
        put_str(&mut b, &self.key);
        b.put_u64_le(self.at_ms);
        b.put_u64_le(self.prev_offset);
        b.freeze()
    }

    pub fn decode(mut p: Bytes) -> Result<DeadLettered, DecodeError> {
        version(&mut p)?;
        Ok(DeadLettered {
            seq: get_u64(&mut p)?,
            key: get_str(&mut p)?,
            at_ms: get_u64(&mut p)?,
            prev_offset: get_u64(&mut p)?,
        })
    }
}

/// The sequence number a record is about, without decoding the rest.
pub fn seq_of(payload: &[u8]) -> Option<u64> {
    let bytes: [u8; 8] = payload.get(1..9)?.try_into().ok()?;
    Some(u64::from_le_bytes(bytes))
}

fn put_str(b: &mut BytesMut, s: &str) {
    put_bytes(b, s.as_bytes());
}

fn put_bytes(b: &mut BytesMut, v: &[u8]) {
    let len = u32::try_from(v.len()).expect("field longer than 4 GiB");
    b.put_u32_le(len);
    b.put_slice(v);
}

fn version(p: &mut Bytes) -> Result<(), DecodeError> {
    match get_u8(p)? {
        VERSION => Ok(()),
        _ => Err(DecodeError("unknown payload version")),
    }
}

fn need(p: &Bytes, n: usize) -> Result<(), DecodeError> {
    if p.remaining() < n {
        Err(DecodeError("truncated payload"))
    } else {
        Ok(())
    }
}

fn get_u8(p: &mut Bytes) -> Result<u8, DecodeError> {
    need(p, 1)?;
    Ok(p.get_u8())
}
fn get_u16(p: &mut Bytes) -> Result<u16, DecodeError> {
    need(p, 2)?;
    Ok(p.get_u16_le())
}
fn get_u32(p: &mut Bytes) -> Result<u32, DecodeError> {
    need(p, 4)?;
    Ok(p.get_u32_le())
}
fn get_u64(p: &mut Bytes) -> Result<u64, DecodeError> {
    need(p, 8)?;
    Ok(p.get_u64_le())
}
fn get_bytes(p: &mut Bytes) -> Result<Bytes, DecodeError> {
    let len = get_u32(p)? as usize;
    need(p, len)?;
    Ok(p.split_to(len))
}
fn get_str(p: &mut Bytes) -> Result<String, DecodeError> {
    let raw = get_bytes(p)?;
    String::from_utf8(raw.to_vec()).map_err(|_| DecodeError("field is not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_status() -> impl Strategy<Value = Status> {
        prop_oneof![
            Just(Status::Queued),
            Just(Status::Success),
            Just(Status::Failed),
            Just(Status::Exhausted)
        ]
    }

    proptest! {
        #[test]
        fn ingested_round_trips(seq: u64, id in "[a-z0-9_]{0,30}", key in ".{0,40}", ms: u64, hash: u64,
                                replay in proptest::option::of("dl_[A-Z0-9]{26}"),
                                headers in proptest::collection::vec(("[a-z-]{1,20}", proptest::collection::vec(any::<u8>(), 0..40)), 0..10),
                                body in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let r = Ingested {
                seq, delivery_id: id.clone(), tenant_id: "tn_x".into(), endpoint_id: id, received_at_ms: ms,
                idempotency_key: key, body_hash: hash, replay_of: replay,
                headers: headers.into_iter().map(|(n, v)| (n, Bytes::from(v))).collect(),
                body: Bytes::from(body),
                key_generation: 0,
                sealed: None,
            };
            let enc = r.encode();
            prop_assert_eq!(seq_of(&enc), Some(seq));
            prop_assert_eq!(Ingested::decode(enc.clone()).unwrap(), r);
            // Every strict prefix is refused, never a panic.
            for cut in [0, 1, enc.len() / 2, enc.len().saturating_sub(1)] {
                if cut < enc.len() {
                    prop_assert!(Ingested::decode(enc.slice(..cut)).is_err());
                }
            }
        }

        #[test]
        fn attempted_round_trips(seq: u64, n: u32, at: u64, code in proptest::option::of(100u16..600),
                                 err in proptest::option::of("[a-z_0-9]{1,20}"), lat: u64, st in arb_status(), due: u64, prev: u64) {
            let r = Attempted { seq, n, at_ms: at, status_code: code, error: err, latency_ms: lat, status_after: st, next_due_ms: due, prev_offset: prev };
            prop_assert_eq!(Attempted::decode(r.encode()).unwrap(), r);
        }
    }

    #[test]
    fn sealed_ingested_round_trips_only_with_its_key() {
        let key = crate::seal::SecretKey::generate();
        let r = Ingested {
            seq: 3,
            delivery_id: "dl_x".into(),
            tenant_id: "tn_x".into(),
            endpoint_id: "ep_x".into(),
            received_at_ms: 5,
            idempotency_key: "k".into(),
            body_hash: 7,
            replay_of: None,
            headers: vec![("a".into(), Bytes::from_static(b"b"))],
            body: Bytes::from_static(b"secret payload"),
            key_generation: 0,
            sealed: None,
        };
        let enc = r.encode_sealed(4, &key);
        assert!(
            !enc.windows(14).any(|w| w == b"secret payload"),
            "payload must not be in the clear"
        );
        let mut d = Ingested::decode(enc).unwrap();
        assert!(d.is_sealed() && d.body.is_empty() && d.key_generation == 4);
        assert_eq!(
            (d.seq, d.endpoint_id.as_str(), d.idempotency_key.as_str()),
            (3, "ep_x", "k")
        );
        let mut wrong = d.clone();
        assert!(wrong.unseal(&crate::seal::SecretKey::generate()).is_err());
        d.unseal(&key).unwrap();
        assert_eq!(d.body, r.body);
        assert_eq!(d.headers, r.headers);
        assert!(!d.is_sealed());
    }

    #[test]
    fn dead_lettered_round_trips() {
        let r = DeadLettered {
            seq: 7,
            key: "tn/ep/2026/01/02/dl.json".into(),
            at_ms: 9,
            prev_offset: 3,
        };
        assert_eq!(DeadLettered::decode(r.encode()).unwrap(), r);
        assert!(DeadLettered::decode(Bytes::from_static(&[9, 0])).is_err());
    }
}
