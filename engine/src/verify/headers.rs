//! The seam between verification and whatever holds the request's headers. The engine never
//! sees hyper types: the api crate passes an [`http::HeaderMap`] or a list of pairs.

/// Read access to a request's headers by name.
pub trait HeaderLookup {
    /// The raw value of the first header called `lowercase_name` (ASCII, lowercase), if any.
    /// Implementations match names case-insensitively.
    fn get(&self, lowercase_name: &str) -> Option<&[u8]>;
}

impl HeaderLookup for http::HeaderMap {
    fn get(&self, lowercase_name: &str) -> Option<&[u8]> {
        http::HeaderMap::get(self, lowercase_name).map(http::HeaderValue::as_bytes)
    }
}

/// Pairs as stored with a delivery (`(name, value)` in arrival order). Linear scan: requests
/// carry a few dozen headers at most.
impl<N: AsRef<str>, V: AsRef<[u8]>> HeaderLookup for [(N, V)] {
    fn get(&self, lowercase_name: &str) -> Option<&[u8]> {
        self.iter()
            .find(|(name, _)| name.as_ref().eq_ignore_ascii_case(lowercase_name))
            .map(|(_, value)| value.as_ref())
    }
}

impl<N: AsRef<str>, V: AsRef<[u8]>> HeaderLookup for Vec<(N, V)> {
    fn get(&self, lowercase_name: &str) -> Option<&[u8]> {
        HeaderLookup::get(self.as_slice(), lowercase_name)
    }
}

impl<N: AsRef<str>, V: AsRef<[u8]>, const K: usize> HeaderLookup for [(N, V); K] {
    fn get(&self, lowercase_name: &str) -> Option<&[u8]> {
        HeaderLookup::get(self.as_slice(), lowercase_name)
    }
}

impl<T: HeaderLookup + ?Sized> HeaderLookup for &T {
    fn get(&self, lowercase_name: &str) -> Option<&[u8]> {
        (**self).get(lowercase_name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_map_lookup_is_case_insensitive_and_returns_the_first_value() {
        let mut map = http::HeaderMap::new();
        map.append("X-Hub-Signature-256", "sha256=aa".parse().expect("value"));
        map.append("x-hub-signature-256", "sha256=bb".parse().expect("value"));
        assert_eq!(
            HeaderLookup::get(&map, "x-hub-signature-256"),
            Some(&b"sha256=aa"[..])
        );
        assert_eq!(HeaderLookup::get(&map, "x-missing"), None);
    }

    #[test]
    fn pair_slice_lookup_is_case_insensitive_and_returns_the_first_value() {
        let pairs: Vec<(String, Vec<u8>)> = vec![
            ("Content-Type".into(), b"application/json".to_vec()),
            ("Webhook-Id".into(), b"msg_1".to_vec()),
            ("webhook-id".into(), b"msg_2".to_vec()),
        ];
        let slice: &[(String, Vec<u8>)] = &pairs;
        assert_eq!(HeaderLookup::get(slice, "webhook-id"), Some(&b"msg_1"[..]));
        assert_eq!(
            HeaderLookup::get(&pairs, "content-type"),
            Some(&b"application/json"[..])
        );
        assert_eq!(HeaderLookup::get(slice, "x-missing"), None);
    }
}
