//! The DLQ object of CONTRACT.md "DLQ and replay": one JSON document per dead-lettered delivery,
//! its key layout `{tenant_id}/{endpoint_id}/{yyyy}/{mm}/{dd}/{delivery_id}.json` (UTC date of
//! dead-lettering), and the RFC 3339 timestamps used in it. The same `AttemptEntry` is the
//! contract's `attempt_history` entry of `GET /v1/deliveries/{id}`.
//!
//! Not here: where objects are stored (`local.rs`, the S3 shipper).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::{Date, Month, OffsetDateTime, UtcOffset};

use super::Error;

/// Longest id part after its prefix (`tn_`, `ep_`, `dl_`). ULIDs are 26 characters.
pub const ID_CHARS_MAX: usize = 64;

/// How a delivery ended up in the DLQ.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FinalStatus {
    /// A non-retryable answer (400, 401, 403, 404, 410, 422, ...).
    Failed,
    /// `max_attempts` attempts without success.
    Exhausted,
}

/// One attempt, as in the contract's `attempt_history`: `{"n", "at", "status_code" | null,
/// "error" | null, "latency_ms"}`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct AttemptEntry {
    /// Attempt number, starting at 1.
    pub n: u32,
    /// When the attempt started, RFC 3339 UTC with milliseconds.
    pub at: String,
    /// The receiver's status, `null` when there was no answer.
    pub status_code: Option<u16>,
    /// What went wrong (`http_503: ...`, `timeout`, ...), `null` on success.
    pub error: Option<String>,
    pub latency_ms: u64,
}

/// A dead-lettered delivery, field for field the contract's DLQ object.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct DlqObject {
    pub delivery_id: String,
    pub tenant_id: String,
    pub endpoint_id: String,
    pub final_status: FinalStatus,
    /// The headers HookRelay received from the sender.
    pub headers: BTreeMap<String, String>,
    /// The body byte for byte, standard base64 with padding.
    pub body_base64: String,
    pub attempt_history: Vec<AttemptEntry>,
    /// When the delivery was ingested, RFC 3339.
    pub first_seen_at: String,
    /// When the delivery became final (for `failed` too), RFC 3339; its UTC date is in the key.
    pub exhausted_at: String,
}

impl DlqObject {
    /// This object's key, from its ids and `exhausted_at`.
    pub fn key(&self) -> Result<String, Error> {
        let at = parse_rfc3339(&self.exhausted_at).ok_or_else(|| Error::Corrupt {
            key: self.delivery_id.clone(),
            reason: format!("exhausted_at {:?} is not RFC 3339", self.exhausted_at),
        })?;
        let key = object_key(&self.tenant_id, &self.endpoint_id, at, &self.delivery_id);
        parse_key(&key)?;
        Ok(key)
    }
}

/// `{tenant_id}/{endpoint_id}/{yyyy}/{mm}/{dd}/{delivery_id}.json`, the date being
/// `exhausted_at`'s in UTC. Does not validate the ids; the stores do (see [`parse_key`]).
pub fn object_key(
    tenant_id: &str,
    endpoint_id: &str,
    exhausted_at: OffsetDateTime,
    delivery_id: &str,
) -> String {
    let d = exhausted_at.to_offset(UtcOffset::UTC).date();
    format!(
        "{tenant_id}/{endpoint_id}/{:04}/{:02}/{:02}/{delivery_id}.json",
        d.year(),
        u8::from(d.month()),
        d.day()
    )
}

/// The stored bytes of `obj` at `key`: its JSON and a newline. `obj` must carry the key's ids
/// (a well-formed key of another delivery is `Error::InvalidKey`, nothing is written).
pub fn encode(key: &str, obj: &DlqObject) -> Result<Vec<u8>, Error> {
    let parts = parse_key(key)?;
    if parts.tenant_id != obj.tenant_id
        || parts.endpoint_id != obj.endpoint_id
        || parts.delivery_id != obj.delivery_id
    {
        return Err(Error::InvalidKey {
            key: key.to_owned(),
            reason: "key does not match the object's tenant, endpoint or delivery id",
        });
    }
    let mut json = serde_json::to_vec(obj).map_err(|e| Error::Corrupt {
        key: key.to_owned(),
        reason: format!("cannot encode: {e}"),
    })?;
    // Pair assertion: what is stored reads back as the same object.
    debug_assert!(
        serde_json::from_slice::<DlqObject>(&json).is_ok_and(|back| &back == obj),
        "DLQ object does not survive a JSON round trip"
    );
    json.push(b'\n');
    Ok(json)
}

/// The object stored at `key`, from its bytes. Bytes that are not a valid object of that key
/// (another delivery's object included) are `Error::Corrupt`.
pub fn decode(key: &str, bytes: &[u8]) -> Result<DlqObject, Error> {
    let parts = parse_key(key)?;
    let obj: DlqObject = serde_json::from_slice(bytes).map_err(|e| Error::Corrupt {
        key: key.to_owned(),
        reason: e.to_string(),
    })?;
    // Pair assertion: the object read back belongs at this key.
    if obj.tenant_id != parts.tenant_id
        || obj.endpoint_id != parts.endpoint_id
        || obj.delivery_id != parts.delivery_id
    {
        return Err(Error::Corrupt {
            key: key.to_owned(),
            reason: format!(
                "object is {}/{}/{}",
                obj.tenant_id, obj.endpoint_id, obj.delivery_id
            ),
        });
    }
    Ok(obj)
}

/// Checks the ids of a range listing and turns its bounds into UTC dates; `None` when the range
/// is empty. Both backends list by these dates, so both check the same way.
pub(crate) fn range_dates(
    tenant_id: &str,
    endpoint_id: Option<&str>,
    from: OffsetDateTime,
    to: OffsetDateTime,
) -> Result<Option<(Date, Date)>, Error> {
    let bad = |reason| Error::InvalidKey {
        key: format!("{tenant_id}/{}", endpoint_id.unwrap_or("")),
        reason,
    };
    if !is_valid_id("tn_", tenant_id) {
        return Err(bad("bad tenant id"));
    }
    if endpoint_id.is_some_and(|e| !is_valid_id("ep_", e)) {
        return Err(bad("bad endpoint id"));
    }
    let from = from.to_offset(UtcOffset::UTC).date();
    let to = to.to_offset(UtcOffset::UTC).date();
    Ok((from <= to).then_some((from, to)))
}

/// Whether month `m` of year `y` (key parts, `yyyy` and `mm`) can hold dates in `from..=to`.
pub(crate) fn month_overlaps(y: &str, m: &str, from: Date, to: Date) -> bool {
    let (Some(y), Some(m)) = (parse_fixed_digits(y, 4), parse_fixed_digits(m, 2)) else {
        return false;
    };
    let (Ok(y), Ok(m)) = (i32::try_from(y), u8::try_from(m)) else {
        return false;
    };
    if !(1..=12).contains(&m) {
        return false;
    }
    let ym = (y, m);
    (from.year(), u8::from(from.month())) <= ym && ym <= (to.year(), u8::from(to.month()))
}

/// `{tenant_id}/{endpoint_id}/{yyyy}/{mm}/{dd}/`, the key prefix of one day's objects.
pub fn day_prefix(tenant_id: &str, endpoint_id: &str, date: Date) -> String {
    format!(
        "{tenant_id}/{endpoint_id}/{:04}/{:02}/{:02}/",
        date.year(),
        u8::from(date.month()),
        date.day()
    )
}

/// A key taken apart. Produced only by [`parse_key`], so its parts are safe path components.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyParts<'a> {
    pub tenant_id: &'a str,
    pub endpoint_id: &'a str,
    pub date: Date,
    pub delivery_id: &'a str,
}

/// Validates a key before it touches a filesystem or bucket: exactly six `/`-separated parts,
/// `tn_`/`ep_`/`dl_` ids of ASCII letters and digits only (ULIDs; no `.`, `/`, `\`), a real
/// `yyyy/mm/dd` date and the `.json` suffix. So no `..`, no absolute path, no empty part.
pub fn parse_key(key: &str) -> Result<KeyParts<'_>, Error> {
    let bad = |reason| Error::InvalidKey {
        key: key.to_owned(),
        reason,
    };
    let mut it = key.split('/');
    let (Some(tenant_id), Some(endpoint_id), Some(y), Some(m), Some(d), Some(file), None) = (
        it.next(),
        it.next(),
        it.next(),
        it.next(),
        it.next(),
        it.next(),
        it.next(),
    ) else {
        return Err(bad("expected tenant/endpoint/yyyy/mm/dd/delivery.json"));
    };
    if !is_valid_id("tn_", tenant_id) {
        return Err(bad("bad tenant id"));
    }
    if !is_valid_id("ep_", endpoint_id) {
        return Err(bad("bad endpoint id"));
    }
    let date = parse_date_parts(y, m, d).ok_or_else(|| bad("bad date"))?;
    let delivery_id = file
        .strip_suffix(".json")
        .ok_or_else(|| bad("missing .json suffix"))?;
    if !is_valid_id("dl_", delivery_id) {
        return Err(bad("bad delivery id"));
    }
    Ok(KeyParts {
        tenant_id,
        endpoint_id,
        date,
        delivery_id,
    })
}

/// `prefix` followed by 1..=[`ID_CHARS_MAX`] ASCII letters or digits (a superset of the ULID
/// alphabet; what matters here is that nothing in it can act as a path separator or `..`).
pub fn is_valid_id(prefix: &str, id: &str) -> bool {
    id.strip_prefix(prefix).is_some_and(|rest| {
        !rest.is_empty()
            && rest.len() <= ID_CHARS_MAX
            && rest.bytes().all(|b| b.is_ascii_alphanumeric())
    })
}

/// A date from the key's `yyyy`, `mm`, `dd` parts (fixed width, digits only).
pub(crate) fn parse_date_parts(y: &str, m: &str, d: &str) -> Option<Date> {
    let year = parse_fixed_digits(y, 4)?;
    let month = Month::try_from(u8::try_from(parse_fixed_digits(m, 2)?).ok()?).ok()?;
    let day = u8::try_from(parse_fixed_digits(d, 2)?).ok()?;
    Date::from_calendar_date(i32::try_from(year).ok()?, month, day).ok()
}

pub(crate) fn parse_fixed_digits(s: &str, width: usize) -> Option<u32> {
    if s.len() != width || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// RFC 3339 in UTC with millisecond precision and `Z`: `2024-03-05T21:07:09.123Z`. Takes an
/// `OffsetDateTime` or a `SystemTime`.
pub fn rfc3339(t: impl Into<OffsetDateTime>) -> String {
    let t = t.into().to_offset(UtcOffset::UTC);
    // Years outside 0..=9999 cannot come from a clock this service runs on.
    debug_assert!(
        (0..=9999).contains(&t.year()),
        "year {} out of range",
        t.year()
    );
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// Parses an RFC 3339 timestamp (any offset).
pub fn parse_rfc3339(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;
    use time::macros::datetime;

    pub(crate) fn sample() -> DlqObject {
        DlqObject {
            delivery_id: "dl_01HV5Z3K8Q9W2E4R6T8Y0G2H4J".to_owned(),
            tenant_id: "tn_01HV5Z3K8Q9W2E4R6T8Y0A2B4C".to_owned(),
            endpoint_id: "ep_01HV5Z3K8Q9W2E4R6T8Y0D2E4F".to_owned(),
            final_status: FinalStatus::Exhausted,
            headers: BTreeMap::from([
                ("content-type".to_owned(), "application/json".to_owned()),
                ("stripe-signature".to_owned(), "t=1,v1=ab".to_owned()),
            ]),
            body_base64: "eyJhIjoxfQ==".to_owned(),
            attempt_history: vec![
                AttemptEntry {
                    n: 1,
                    at: "2024-03-05T21:00:00.000Z".to_owned(),
                    status_code: Some(503),
                    error: Some("http_503".to_owned()),
                    latency_ms: 12,
                },
                AttemptEntry {
                    n: 2,
                    at: "2024-03-05T21:00:05.000Z".to_owned(),
                    status_code: None,
                    error: Some("timeout".to_owned()),
                    latency_ms: 10_000,
                },
            ],
            first_seen_at: "2024-03-05T20:59:59.500Z".to_owned(),
            exhausted_at: "2024-03-05T21:07:09.123Z".to_owned(),
        }
    }

    #[test]
    fn json_field_names_are_the_contracts() {
        let v = serde_json::to_value(sample()).expect("serialize");
        let mut keys: Vec<&str> = v
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "attempt_history",
                "body_base64",
                "delivery_id",
                "endpoint_id",
                "exhausted_at",
                "final_status",
                "first_seen_at",
                "headers",
                "tenant_id"
            ]
        );
        assert_eq!(v["final_status"], "exhausted");
        assert_eq!(v["headers"]["content-type"], "application/json");
        let a = &v["attempt_history"][1];
        let mut akeys: Vec<&str> = a
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        akeys.sort_unstable();
        assert_eq!(akeys, ["at", "error", "latency_ms", "n", "status_code"]);
        // `null`, not absent, when there was no answer.
        assert!(a["status_code"].is_null());
        assert_eq!(a["n"], 2);
        let failed = DlqObject {
            final_status: FinalStatus::Failed,
            ..sample()
        };
        assert_eq!(
            serde_json::to_value(failed).expect("serialize")["final_status"],
            "failed"
        );
        let back: DlqObject = serde_json::from_value(v).expect("deserialize");
        assert_eq!(back, sample());
    }

    #[test]
    fn key_layout_uses_the_utc_date() {
        // 01:30 at +02:00 is still the previous day in UTC.
        let at = datetime!(2024-03-06 01:30:00 +02:00);
        assert_eq!(
            object_key("tn_A1", "ep_B2", at, "dl_C3"),
            "tn_A1/ep_B2/2024/03/05/dl_C3.json"
        );
        assert_eq!(
            sample().key().expect("key"),
            format!(
                "{}/{}/2024/03/05/{}.json",
                sample().tenant_id,
                sample().endpoint_id,
                sample().delivery_id
            )
        );
    }

    #[test]
    fn rfc3339_has_milliseconds_and_z() {
        assert_eq!(
            rfc3339(datetime!(2024-03-06 01:30:05.123456 +02:00)),
            "2024-03-05T23:30:05.123Z"
        );
        let st = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_500);
        assert_eq!(rfc3339(st), "1970-01-01T00:00:01.500Z");
        assert_eq!(
            parse_rfc3339("2024-03-05T23:30:05.123Z"),
            Some(datetime!(2024-03-05 23:30:05.123 UTC))
        );
        assert_eq!(parse_rfc3339("yesterday"), None);
    }

    #[test]
    fn bad_keys_are_rejected() {
        let bad = [
            "",
            "/etc/passwd",
            "../tn_A/ep_B/2024/03/05/dl_C.json",
            "tn_A/ep_B/2024/03/05/../../dl_C.json",
            "tn_A/ep_B/2024/03/05/dl_C.json/..",
            "tn_A/../2024/03/05/dl_C.json",
            "tn_A/ep_B/2024/03/05/..json",
            "tn_A/ep_B/2024/03/05/dl_..json",
            "tn_A/ep_B/2024/03/05/dl_C",
            "tn_A/ep_B/2024/03/05/dl_C.txt",
            "tn_A/ep_B/2024/13/05/dl_C.json",
            "tn_A/ep_B/2024/02/30/dl_C.json",
            "tn_A/ep_B/24/03/05/dl_C.json",
            "tn_A/ep_B/2024/3/05/dl_C.json",
            "tn_A//2024/03/05/dl_C.json",
            "tn_/ep_B/2024/03/05/dl_C.json",
            "ep_B/tn_A/2024/03/05/dl_C.json",
            "tn_A/ep_B/2024/03/05/dl_C\\..json",
            "tn_A\\..\\x/ep_B/2024/03/05/dl_C.json",
            "tn_A/ep_B/2024/03/05/dl_C.json/extra",
            "tn_A/ep_B/2024/03/05",
            "tn_A/ep_B/2024/03/05/dl_Ç.json",
        ];
        for k in bad {
            assert!(
                matches!(parse_key(k), Err(Error::InvalidKey { .. })),
                "{k:?}"
            );
        }
        let ok = parse_key("tn_A/ep_B/2024/02/29/dl_C.json").expect("leap day");
        assert_eq!(ok.date, time::macros::date!(2024 - 02 - 29));
        assert_eq!(
            (ok.tenant_id, ok.endpoint_id, ok.delivery_id),
            ("tn_A", "ep_B", "dl_C")
        );
    }

    proptest! {
        #[test]
        fn object_key_parses_back(
            t in "[0-9A-Z]{1,26}", e in "[0-9A-Z]{1,26}", d in "[0-9A-Z]{1,26}",
            secs in 0i64..253_402_300_799,
        ) {
            let at = OffsetDateTime::from_unix_timestamp(secs).expect("in range");
            let (t, e, d) = (format!("tn_{t}"), format!("ep_{e}"), format!("dl_{d}"));
            let key = object_key(&t, &e, at, &d);
            let parts = parse_key(&key).expect("parses");
            prop_assert_eq!(parts.tenant_id, t.as_str());
            prop_assert_eq!(parts.endpoint_id, e.as_str());
            prop_assert_eq!(parts.delivery_id, d.as_str());
            prop_assert_eq!(parts.date, at.date());
        }
    }
}
