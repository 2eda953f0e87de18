//! Query-string parameters of list routes.

use std::collections::HashMap;

use crate::problem::{Code, Problem};

/// Decoded `?a=b&c=d` pairs (the last value of a repeated key wins).
pub struct Query {
    pairs: HashMap<String, String>,
}

impl Query {
    pub fn parse(raw: Option<&str>) -> Query {
        let pairs = raw
            .map(|q| {
                form_urlencoded_pairs(q)
                    .into_iter()
                    .collect::<HashMap<String, String>>()
            })
            .unwrap_or_default();
        Query { pairs }
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// `limit`, defaulting to `default`, 422 outside 1..=max.
    pub fn limit(&self, default: usize, max: usize) -> Result<usize, Problem> {
        match self.get("limit") {
            None => Ok(default),
            Some(v) => v
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=max).contains(n))
                .ok_or_else(|| {
                    Problem::new(Code::ValidationFailed, format!("limit must be 1..={max}"))
                }),
        }
    }
}

fn form_urlencoded_pairs(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// Percent-decoding with `+` as space; invalid escapes are kept literally.
fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(
                    std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"),
                    16,
                ) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_and_limits() {
        let q = Query::parse(Some("a=x%20y&b=c+d&limit=10&bad=%zz&end=%4"));
        assert_eq!(q.get("a"), Some("x y"));
        assert_eq!(q.get("b"), Some("c d"));
        assert_eq!(q.get("bad"), Some("%zz"));
        assert_eq!(q.get("end"), Some("%4"));
        assert_eq!(q.limit(50, 1000).unwrap(), 10);
        assert!(Query::parse(Some("limit=0")).limit(50, 1000).is_err());
        assert!(Query::parse(Some("limit=1001")).limit(50, 1000).is_err());
        assert_eq!(Query::parse(None).limit(50, 1000).unwrap(), 50);
    }
}
