//! The record frame: a fixed 24-byte header followed by the payload.
//!
//! ```text
//! byte  0..4   payload length   u32 LE
//! byte  4..8   crc32            u32 LE  crc32fast over bytes 8..24 of the header + the payload
//! byte  8..16  offset           u64 LE
//! byte 16..20  epoch            u32 LE
//! byte 20      record type      u8
//! byte 21..24  reserved         zero
//! byte 24..    payload
//! ```
//!
//! This module only encodes and checks bytes; it knows nothing about files.

/// Size of the fixed frame header.
pub const FRAME_HEADER_BYTES: usize = 24;

/// The decoded fixed part of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FrameHeader {
    pub payload_len: u32,
    pub crc: u32,
    pub offset: u64,
    pub epoch: u32,
    pub record_type: u8,
}

impl FrameHeader {
    /// Header + payload length in bytes.
    pub fn frame_len(&self) -> u64 {
        FRAME_HEADER_BYTES as u64 + u64::from(self.payload_len)
    }
}

/// The result of looking at the bytes where a frame should start.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum FrameCheck {
    /// A whole frame with a matching CRC.
    Valid(FrameHeader),
    /// Fewer bytes than the header or the declared payload need.
    Incomplete,
    /// The declared length exceeds the configured maximum.
    TooLarge(u64),
    /// The CRC does not match the bytes.
    BadCrc,
    /// CRC matched but the reserved bytes are not zero (a writer of a newer format).
    BadReserved,
}

impl FrameCheck {
    /// A short human description for error messages.
    pub fn reason(&self) -> String {
        match self {
            FrameCheck::Valid(_) => "valid frame".into(),
            FrameCheck::Incomplete => "incomplete frame".into(),
            FrameCheck::TooLarge(len) => format!("frame length {len} over the maximum"),
            FrameCheck::BadCrc => "crc mismatch".into(),
            FrameCheck::BadReserved => "reserved header bytes are not zero".into(),
        }
    }
}

/// Encodes the header for `payload`, CRC included.
pub(crate) fn encode_header(
    offset: u64,
    epoch: u32,
    record_type: u8,
    payload: &[u8],
) -> [u8; FRAME_HEADER_BYTES] {
    let len = u32::try_from(payload.len()).expect("payload length checked against frame_bytes_max");
    let mut h = [0u8; FRAME_HEADER_BYTES];
    h[0..4].copy_from_slice(&len.to_le_bytes());
    h[8..16].copy_from_slice(&offset.to_le_bytes());
    h[16..20].copy_from_slice(&epoch.to_le_bytes());
    h[20] = record_type;
    let crc = crc_of(&h, payload);
    h[4..8].copy_from_slice(&crc.to_le_bytes());
    h
}

fn crc_of(header: &[u8; FRAME_HEADER_BYTES], payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&header[8..]);
    hasher.update(payload);
    hasher.finalize()
}

/// Decodes the fixed header without checking the CRC.
pub(crate) fn decode_header(h: &[u8; FRAME_HEADER_BYTES]) -> FrameHeader {
    FrameHeader {
        payload_len: u32::from_le_bytes([h[0], h[1], h[2], h[3]]),
        crc: u32::from_le_bytes([h[4], h[5], h[6], h[7]]),
        offset: u64::from_le_bytes([h[8], h[9], h[10], h[11], h[12], h[13], h[14], h[15]]),
        epoch: u32::from_le_bytes([h[16], h[17], h[18], h[19]]),
        record_type: h[20],
    }
}

/// Checks the frame that starts at `buf[0]`. `buf` may extend past the frame (or stop short).
pub(crate) fn check(buf: &[u8], frame_bytes_max: u32) -> FrameCheck {
    let Some(hb) = buf.get(..FRAME_HEADER_BYTES) else {
        return FrameCheck::Incomplete;
    };
    let Ok(hb) = <&[u8; FRAME_HEADER_BYTES]>::try_from(hb) else {
        return FrameCheck::Incomplete;
    };
    let header = decode_header(hb);
    let frame_len = header.frame_len();
    if frame_len > u64::from(frame_bytes_max) {
        return FrameCheck::TooLarge(frame_len);
    }
    let Some(payload) = usize::try_from(frame_len)
        .ok()
        .and_then(|end| buf.get(FRAME_HEADER_BYTES..end))
    else {
        return FrameCheck::Incomplete;
    };
    if crc_of(hb, payload) != header.crc {
        return FrameCheck::BadCrc;
    }
    if hb[21..24] != [0, 0, 0] {
        return FrameCheck::BadReserved;
    }
    FrameCheck::Valid(header)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let payload = b"hello frame";
        let h = encode_header(42, 7, 3, payload);
        let mut buf = h.to_vec();
        buf.extend_from_slice(payload);
        let FrameCheck::Valid(d) = check(&buf, 1024) else {
            panic!("frame should be valid");
        };
        assert_eq!(
            (d.offset, d.epoch, d.record_type, d.payload_len),
            (42, 7, 3, payload.len() as u32)
        );
        assert_eq!(d.frame_len() as usize, buf.len());
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let payload = b"abc";
        let mut buf = encode_header(1, 2, 3, payload).to_vec();
        buf.extend_from_slice(payload);
        for i in 0..buf.len() * 8 {
            let mut b = buf.clone();
            b[i / 8] ^= 1 << (i % 8);
            assert!(
                !matches!(check(&b, 1024), FrameCheck::Valid(_)),
                "bit {i} flip not detected"
            );
        }
    }

    #[test]
    fn short_and_oversized() {
        let payload = vec![9u8; 100];
        let mut buf = encode_header(0, 0, 0, &payload).to_vec();
        buf.extend_from_slice(&payload);
        for cut in 0..buf.len() {
            assert_eq!(check(&buf[..cut], 1024), FrameCheck::Incomplete);
        }
        assert_eq!(check(&buf, 100), FrameCheck::TooLarge(124));
        // All zeros (e.g. a preallocated or zero-filled tail) is never a valid frame.
        assert!(!matches!(check(&[0u8; 64], 1024), FrameCheck::Valid(_)));
    }
}
