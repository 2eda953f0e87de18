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

/// Payload format version of records whose fields are all in the clear. For an `Ingested`
/// record: written by earlier releases, with a SHA-256 body hash ([`Algorithms::Legacy`]).
const VERSION: u8 = 1;
/// Version of an `Ingested` record whose headers and body are sealed under the tenant's data key
/// (see [`crate::seal`]); everything else stays readable for recovery and indexes. Written by
/// earlier releases: ChaCha20-Poly1305 and a SHA-256 body hash ([`Algorithms::Legacy`]).
const VERSION_SEALED: u8 = 2;
/// Version 1's layout with an XXH3 body hash: the `Ingested` records written now, in the clear.
const VERSION_XXH3: u8 = 3;
/// Version 2's layout with an XXH3 body hash and AES-256-GCM under one subkey per data key:
/// written by the release before version 5 ([`Algorithms::Xxh3AesGcm`]).
const VERSION_SEALED_AES: u8 = 4;
/// Version 2's layout with an XXH3 body hash and AES-256-GCM under subkeys of bounded use
/// ([`crate::seal::Aead::Aes256GcmSubkeys`]): the `Ingested` records written now, sealed.
const VERSION_SEALED_AES_SUBKEYS: u8 = 5;
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

/// The algorithms an [`Ingested`] record was written with; its version byte says which.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithms {
    /// Versions 1 and 2, written by earlier releases: SHA-256 body hash, ChaCha20-Poly1305.
    Legacy,
    /// Version 4, written by the release before: XXH3 body hash, AES-256-GCM under one subkey
    /// of the data key (BENCHMARKS.md, "Cheaper hashing and sealing").
    Xxh3AesGcm,
    /// Versions 3 and 5, written now: XXH3 body hash, AES-256-GCM under subkeys that each seal
    /// at most [`crate::seal::SUBKEY_SEALS_MAX`] payloads.
    Current,
}

impl Algorithms {
    /// How the record's `body_hash` was computed.
    pub fn body_hash(self) -> crate::idempotency::BodyHash {
        match self {
            Algorithms::Legacy => crate::idempotency::BodyHash::Sha256Prefix,
            Algorithms::Xxh3AesGcm | Algorithms::Current => crate::idempotency::BodyHash::Xxh3,
        }
    }

    /// What the record's payload is sealed with, when it is.
    pub fn aead(self) -> crate::seal::Aead {
        match self {
            Algorithms::Legacy => crate::seal::Aead::ChaCha20Poly1305,
            Algorithms::Xxh3AesGcm => crate::seal::Aead::Aes256Gcm,
            Algorithms::Current => crate::seal::Aead::Aes256GcmSubkeys,
        }
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
    /// How `body_hash` was computed and `sealed` sealed (from the version byte; records are
    /// always encoded with [`Algorithms::Current`]).
    pub algorithms: Algorithms,
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

/// The headers and body of an ingest request, already in the record's payload encoding (a
/// `u16` header count, length-prefixed names and values, the length-prefixed body). The ingest
/// path builds it once, in one allocation, on the thread that read the request; the owning
/// shard copies it once into the record (sealing it in place when the tenant has a data key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestPayload {
    bytes: Bytes,
    /// Where the body starts in `bytes`.
    body_at: usize,
    /// The body's hash under [`Algorithms::Current`], computed with the payload (off the owning
    /// shard's thread).
    body_hash: u64,
}

impl IngestPayload {
    /// Encodes `headers` (at most [`HEADERS_MAX`]) and `body`.
    pub fn encode<'a, I>(headers: I, body: &[u8]) -> IngestPayload
    where
        I: IntoIterator<Item = (&'a str, &'a [u8])> + Clone,
    {
        let (count, header_bytes) = headers
            .clone()
            .into_iter()
            .fold((0usize, 0usize), |(n, bytes), (name, value)| {
                (n + 1, bytes + 8 + name.len() + value.len())
            });
        assert!(
            count <= HEADERS_MAX,
            "{count} headers, at most {HEADERS_MAX}"
        );
        let mut b = BytesMut::with_capacity(2 + header_bytes + 4 + body.len());
        b.put_u16_le(count as u16);
        for (name, value) in headers {
            put_str(&mut b, name);
            put_bytes(&mut b, value);
        }
        put_bytes(&mut b, body);
        let body_at = b.len() - body.len();
        IngestPayload {
            bytes: b.freeze(),
            body_at,
            body_hash: Algorithms::Current.body_hash().of(body),
        }
    }

    pub fn body(&self) -> &[u8] {
        &self.bytes[self.body_at..]
    }

    pub fn body_hash(&self) -> u64 {
        self.body_hash
    }

    /// The encoded bytes, as they go into the record.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The headers and the body back.
    #[cfg(test)]
    pub fn decode(&self) -> (Vec<(String, Bytes)>, Bytes) {
        Ingested::get_payload(&mut self.bytes.clone())
            .expect("an IngestPayload is well formed by construction")
    }
}

/// The fields of an [`Ingested`] record around its payload, borrowed: what the ingest path
/// encodes around an [`IngestPayload`].
#[derive(Debug, Clone, Copy)]
pub struct IngestedHead<'a> {
    pub seq: u64,
    pub delivery_id: &'a str,
    pub tenant_id: &'a str,
    pub endpoint_id: &'a str,
    pub received_at_ms: u64,
    pub idempotency_key: &'a str,
    pub body_hash: u64,
    pub replay_of: Option<&'a str>,
}

impl IngestedHead<'_> {
    /// The record: these fields, then `payload` (an [`IngestPayload`]'s bytes) in the clear,
    /// or sealed under generation `seal.0` of the tenant's data key, bound to the delivery id.
    /// One allocation; a sealed payload is encrypted in place in the record's own buffer.
    pub fn encode(&self, payload: &[u8], seal: Option<(u32, &crate::seal::SecretKey)>) -> Bytes {
        let strings = self.delivery_id.len()
            + self.tenant_id.len()
            + self.endpoint_id.len()
            + self.idempotency_key.len()
            + self.replay_of.map_or(0, str::len);
        let sealed_len = Algorithms::Current.aead().sealed_len(payload.len());
        let tail = match seal {
            Some(_) => 4 + 4 + sealed_len,
            None => payload.len(),
        };
        let mut b = BytesMut::with_capacity(1 + 8 + 8 + 8 + 5 * 4 + strings + tail);
        b.put_u8(if seal.is_some() {
            VERSION_SEALED_AES_SUBKEYS
        } else {
            VERSION_XXH3
        });
        b.put_u64_le(self.seq);
        put_str(&mut b, self.delivery_id);
        put_str(&mut b, self.tenant_id);
        put_str(&mut b, self.endpoint_id);
        b.put_u64_le(self.received_at_ms);
        put_str(&mut b, self.idempotency_key);
        b.put_u64_le(self.body_hash);
        put_str(&mut b, self.replay_of.unwrap_or(""));
        match seal {
            None => b.put_slice(payload),
            Some((generation, key)) => {
                assert!(generation > 0, "generation 0 means not sealed");
                b.put_u32_le(generation);
                b.put_u32_le(u32::try_from(sealed_len).expect("field longer than 4 GiB"));
                key.seal_append(
                    Algorithms::Current.aead(),
                    &mut b,
                    payload,
                    self.delivery_id.as_bytes(),
                );
            }
        }
        b.freeze()
    }
}

/// The whole-record encoders, for tests: the ingest path encodes an [`IngestedHead`] around the
/// [`IngestPayload`] it built on the request's thread instead.
#[cfg(test)]
impl Ingested {
    fn head(&self) -> IngestedHead<'_> {
        IngestedHead {
            seq: self.seq,
            delivery_id: &self.delivery_id,
            tenant_id: &self.tenant_id,
            endpoint_id: &self.endpoint_id,
            received_at_ms: self.received_at_ms,
            idempotency_key: &self.idempotency_key,
            body_hash: self.body_hash,
            replay_of: self.replay_of.as_deref(),
        }
    }

    fn payload(&self) -> IngestPayload {
        IngestPayload::encode(
            self.headers.iter().map(|(n, v)| (n.as_str(), &v[..])),
            &self.body,
        )
    }

    pub fn encode(&self) -> Bytes {
        self.head().encode(self.payload().as_bytes(), None)
    }

    /// Like [`Ingested::encode`], with headers and body sealed under `key` (generation `generation`
    /// of the tenant's data key), bound to the delivery id.
    pub fn encode_sealed(&self, generation: u32, key: &crate::seal::SecretKey) -> Bytes {
        self.head()
            .encode(self.payload().as_bytes(), Some((generation, key)))
    }
}

impl Ingested {
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
            .open_with(self.algorithms.aead(), &sealed, self.delivery_id.as_bytes())
            .map_err(|_| DecodeError("sealed payload does not open with this key"))?;
        let mut p = Bytes::from(plain);
        let (headers, body) = Self::get_payload(&mut p)?;
        self.headers = headers;
        self.body = body;
        Ok(())
    }

    pub fn decode(mut p: Bytes) -> Result<Ingested, DecodeError> {
        let (sealed_format, algorithms) = match get_u8(&mut p)? {
            VERSION => (false, Algorithms::Legacy),
            VERSION_SEALED => (true, Algorithms::Legacy),
            VERSION_XXH3 => (false, Algorithms::Current),
            VERSION_SEALED_AES => (true, Algorithms::Xxh3AesGcm),
            VERSION_SEALED_AES_SUBKEYS => (true, Algorithms::Current),
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
            algorithms,
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
                algorithms: Algorithms::Current,
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
            algorithms: Algorithms::Current,
        };
        let enc = r.encode_sealed(4, &key);
        assert_eq!(enc[0], VERSION_SEALED_AES_SUBKEYS);
        assert!(
            !enc.windows(14).any(|w| w == b"secret payload"),
            "payload must not be in the clear"
        );
        let mut d = Ingested::decode(enc).unwrap();
        assert!(d.is_sealed() && d.body.is_empty() && d.key_generation == 4);
        assert_eq!(d.algorithms, Algorithms::Current);
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

    /// The bytes of a record written by an earlier release (version 1, before the payload was
    /// encoded on the request's thread) still decode, as what they were; records written now
    /// are the same layout under version 3. The format on disk must not move.
    #[test]
    fn ingested_encoding_is_stable() {
        let mut r = Ingested {
            seq: 258,
            delivery_id: "dl_1".into(),
            tenant_id: "tn_x".into(),
            endpoint_id: "ep_y".into(),
            received_at_ms: 1_700_000_000_123,
            idempotency_key: "evt_1".into(),
            body_hash: 0x0102030405060708,
            replay_of: Some("dl_0".into()),
            headers: vec![
                (
                    "content-type".into(),
                    Bytes::from_static(b"application/json"),
                ),
                ("x-a".into(), Bytes::new()),
            ],
            body: Bytes::from_static(b"{\"id\":\"evt_1\"}"),
            key_generation: 0,
            sealed: None,
            algorithms: Algorithms::Current,
        };
        let rest = concat!(
            "020100000000000004000000646c5f3104000000746e5f780400000065705f797b68e5cf8b01000005",
            "0000006576745f31080706050403020104000000646c5f3002000c000000636f6e74656e742d74797065",
            "100000006170706c69636174696f6e2f6a736f6e03000000782d61000000000e0000007b226964223a22",
            "6576745f31227d",
        );
        assert_eq!(hex::encode(r.encode()), format!("03{rest}"));
        let payload = r.payload();
        assert_eq!(payload.body(), &r.body[..]);
        assert_eq!(payload.decode(), (r.headers.clone(), r.body.clone()));
        assert_eq!(
            payload.body_hash(),
            crate::idempotency::BodyHash::Xxh3.of(&r.body)
        );

        let legacy = Bytes::from(hex::decode(format!("01{rest}")).unwrap());
        r.algorithms = Algorithms::Legacy;
        assert_eq!(Ingested::decode(legacy).unwrap(), r);
    }

    /// A sealed record of an earlier release (version 2: ChaCha20-Poly1305, SHA-256 body hash)
    /// still opens with its key.
    #[test]
    fn legacy_sealed_records_open_with_chacha20_poly1305() {
        let key = crate::seal::SecretKey::generate();
        let payload = IngestPayload::encode([("a", &b"b"[..])], b"old secret");
        let mut enc = BytesMut::new();
        enc.put_u8(VERSION_SEALED);
        enc.put_u64_le(9);
        for s in ["dl_old", "tn_x", "ep_x"] {
            put_str(&mut enc, s);
        }
        enc.put_u64_le(5);
        put_str(&mut enc, "k");
        let sha = crate::idempotency::BodyHash::Sha256Prefix.of(b"old secret");
        enc.put_u64_le(sha);
        put_str(&mut enc, "");
        enc.put_u32_le(2);
        let sealed = key.seal(payload.as_bytes(), b"dl_old");
        put_bytes(&mut enc, &sealed);
        let mut d = Ingested::decode(enc.freeze()).unwrap();
        assert_eq!(
            (d.algorithms, d.key_generation, d.body_hash),
            (Algorithms::Legacy, 2, sha)
        );
        d.unseal(&key).unwrap();
        assert_eq!(&d.body[..], b"old secret");
        assert_eq!(d.headers, vec![("a".to_string(), Bytes::from_static(b"b"))]);
    }

    /// A sealed record of the release before (version 4: AES-256-GCM under the data key's one
    /// subkey, XXH3 body hash) still opens with its key.
    #[test]
    fn version_4_sealed_records_open_with_the_single_aes_subkey() {
        let key = crate::seal::SecretKey::generate();
        let payload = IngestPayload::encode([("a", &b"b"[..])], b"v4 secret");
        let mut enc = BytesMut::new();
        enc.put_u8(VERSION_SEALED_AES);
        enc.put_u64_le(9);
        for s in ["dl_v4", "tn_x", "ep_x"] {
            put_str(&mut enc, s);
        }
        enc.put_u64_le(5);
        put_str(&mut enc, "k");
        enc.put_u64_le(payload.body_hash());
        put_str(&mut enc, "");
        enc.put_u32_le(3);
        let mut sealed = BytesMut::new();
        key.seal_append(
            crate::seal::Aead::Aes256Gcm,
            &mut sealed,
            payload.as_bytes(),
            b"dl_v4",
        );
        put_bytes(&mut enc, &sealed);
        let mut d = Ingested::decode(enc.freeze()).unwrap();
        assert_eq!(
            (d.algorithms, d.key_generation, d.body_hash),
            (Algorithms::Xxh3AesGcm, 3, payload.body_hash())
        );
        d.unseal(&key).unwrap();
        assert_eq!(&d.body[..], b"v4 secret");
        assert_eq!(d.headers, vec![("a".to_string(), Bytes::from_static(b"b"))]);
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
