//! The checksummed JSON line: `<crc32 of the JSON, 8 hex digits> <json>\n`. The metadata log
//! and the audit store write their records this way, so a torn or damaged line is told from a
//! good one without a frame format.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Appends the line for `value` (terminator included) to `out`.
pub fn encode_into<T: Serialize>(value: &T, out: &mut Vec<u8>) {
    let json = serde_json::to_vec(value).expect("record types serialise");
    let crc = crc32fast::hash(&json);
    out.reserve(json.len() + 10);
    out.extend_from_slice(format!("{crc:08x} ").as_bytes());
    out.extend_from_slice(&json);
    out.push(b'\n');
}

/// Parses a line given without its `\n`: the checksum must match, then the JSON must parse.
pub fn parse<T: DeserializeOwned>(line: &[u8]) -> Result<T, String> {
    if line.len() < 10 || line.get(8) != Some(&b' ') {
        return Err("malformed line".into());
    }
    let (crc_hex, rest) = line.split_at(8);
    let json = &rest[1..];
    let crc = std::str::from_utf8(crc_hex)
        .ok()
        .and_then(|s| u32::from_str_radix(s, 16).ok())
        .ok_or("bad checksum field")?;
    if crc32fast::hash(json) != crc {
        return Err("checksum mismatch".into());
    }
    serde_json::from_slice(json).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_damage() {
        let mut line = Vec::new();
        encode_into(&serde_json::json!({"a": 1}), &mut line);
        assert_eq!(line.last(), Some(&b'\n'));
        let body = &line[..line.len() - 1];
        assert_eq!(
            parse::<serde_json::Value>(body).unwrap(),
            serde_json::json!({"a": 1})
        );
        let mut bad = body.to_vec();
        bad[12] ^= 1;
        assert_eq!(
            parse::<serde_json::Value>(&bad),
            Err("checksum mismatch".into())
        );
        assert!(parse::<serde_json::Value>(b"short").is_err());
        assert!(parse::<serde_json::Value>(b"zzzzzzzz {}").is_err());
    }
}
