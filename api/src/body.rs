//! Reading request bodies within limits, and JSON bodies with the contract's errors.

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Body as _;
use hyper::body::Incoming;
use serde::de::DeserializeOwned;

use crate::problem::{Code, Problem};

/// Largest management API request body.
pub const MANAGEMENT_BODY_BYTES_MAX: usize = 1 << 20;

/// Why a body could not be read.
#[derive(Debug)]
pub enum BodyError {
    TooLarge,
    /// The client went away or sent a malformed body.
    Broken(String),
}

/// Reads the whole body, refusing (without buffering further) once it passes `max` bytes. On
/// `TooLarge` the rest of the body is still in `body`, for the caller to drain. A body that
/// arrives in one frame (the usual webhook) is returned as that frame, without a copy; one in
/// several frames is gathered into a buffer sized from what is still expected.
pub async fn read_limited(body: &mut Incoming, max: usize) -> Result<Bytes, BodyError> {
    let mut first: Option<Bytes> = None;
    let mut gathered: Option<BytesMut> = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| BodyError::Broken(e.to_string()))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let have =
            first.as_ref().map_or(0, Bytes::len) + gathered.as_ref().map_or(0, BytesMut::len);
        if have + data.len() > max {
            return Err(BodyError::TooLarge);
        }
        if let Some(buf) = gathered.as_mut() {
            buf.extend_from_slice(&data);
        } else if let Some(head) = first.take() {
            let expected = usize::try_from(body.size_hint().lower()).unwrap_or(max);
            let mut buf = BytesMut::with_capacity((have + data.len() + expected).min(max));
            buf.extend_from_slice(&head);
            buf.extend_from_slice(&data);
            gathered = Some(buf);
        } else {
            first = Some(data);
        }
    }
    Ok(match (gathered, first) {
        (Some(buf), _) => buf.freeze(),
        (None, Some(head)) => head,
        (None, None) => Bytes::new(),
    })
}

/// Reads and parses a JSON management body: syntax errors are 400 `invalid_json`, a body of
/// the wrong shape is 422 `validation_failed`, an oversized one 413.
pub async fn read_json<T: DeserializeOwned>(body: &mut Incoming) -> Result<T, Problem> {
    let bytes = match read_limited(body, MANAGEMENT_BODY_BYTES_MAX).await {
        Ok(b) => b,
        Err(BodyError::TooLarge) => {
            return Err(Problem::new(
                Code::PayloadTooLarge,
                format!(
                    "management request bodies are limited to {MANAGEMENT_BODY_BYTES_MAX} bytes"
                ),
            ));
        }
        Err(BodyError::Broken(e)) => {
            return Err(Problem::new(
                Code::InvalidJson,
                format!("could not read the body: {e}"),
            ));
        }
    };
    parse_json(&bytes)
}

/// Parses JSON with the error mapping of [`read_json`].
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    let bytes = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}".as_slice()
    } else {
        bytes
    };
    // Syntax first, shape second: serde reports a type error before a later syntax error when
    // it deserializes straight into `T`, and the two deserve different answers.
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| Problem::new(Code::InvalidJson, format!("malformed JSON: {e}")))?;
    serde_json::from_value(value).map_err(|e| Problem::new(Code::ValidationFailed, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::problem::Code;

    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct T {
        name: String,
    }

    #[test]
    fn syntax_errors_are_invalid_json_and_shape_errors_validation_failed() {
        for bad in [&b"{\"name\": "[..], b"{\"name\": 'x'}", b"\xff\xfe", b"[1,"] {
            let e = parse_json::<T>(bad).unwrap_err();
            assert_eq!(
                e.code,
                Code::InvalidJson,
                "{:?}: {}",
                String::from_utf8_lossy(bad),
                e.detail
            );
        }
        let e = parse_json::<T>(b"{\"name\": 5}").unwrap_err();
        assert_eq!(e.code, Code::ValidationFailed);
    }
}
