//! Arbitrary bytes as the method and target of an API request, parsed the way the broker routes
//! it (`virtgate_broker::http_path`). Properties:
//! - nothing panics, whatever the bytes (main's old `percent_decode` sliced `&s[i + 1..i + 3]`
//!   and panicked on `/v1/hosts/%é`, security review §4);
//! - bounded: a decoded string is never longer than 3 bytes per input byte (U+FFFD for each
//!   invalid byte) and there are never more segments than `/` + 1;
//! - percent-encoding any string and decoding it gives the string back, so host names in
//!   `/v1/hosts/{name}` and `?host=` survive any spelling a client may choose;
//! - an encoded `/` (`%2F`) stays inside its segment: it never creates a route;
//! - `query_param` returns the value of the first pair whose key matches, never a piece of
//!   another pair.
#![no_main]

use libfuzzer_sys::fuzz_target;
use virtgate_broker::http_path::{parse_request, path_segments, percent_decode, query_param, Endpoint};

const METHODS: [&str; 4] = ["GET", "POST", "PUT", "DELETE"];

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let text = text.as_ref();
    for method in METHODS {
        let _ = parse_request(method, text);
    }

    let (path, query) = match text.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (text, None),
    };
    let segments = path_segments(path);
    assert!(segments.len() <= path.matches('/').count() + 1);
    for plus_is_space in [false, true] {
        assert!(percent_decode(text, plus_is_space).len() <= 3 * text.len());
    }

    // Round trip: any string, encoded, decodes to itself — as a segment and as a value.
    let encoded = encode(text);
    assert_eq!(percent_decode(&encoded, false), text);
    assert_eq!(percent_decode(&encoded, true), text);
    if !text.is_empty() {
        let target = format!("/v1/hosts/{encoded}");
        assert_eq!(path_segments(&target), ["v1", "hosts", text], "{encoded:?}");
        assert_eq!(
            parse_request("GET", &target),
            Endpoint::Host { name: text.to_string() }
        );
    }
    let query_string = format!("a=1&host={encoded}&host=second");
    assert_eq!(query_param(Some(&query_string), "host"), Some(text.to_string()));

    // Whatever the query, the value found is the one of the first pair with that key.
    for key in ["host", "since", "timeout", "limit", "after", "expiring_within", "epoch"] {
        let first = query.and_then(|q| {
            q.split('&')
                .filter_map(|kv| kv.split_once('='))
                .find(|(k, _)| percent_decode(k, true) == key)
                .map(|(_, v)| percent_decode(v, true))
        });
        assert_eq!(query_param(query, key), first);
    }
});

/// Every byte outside RFC 3986's unreserved set as `%XX`.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
