//! TODO(api_path): NOT BUILT YET (no `[[bin]]` in Cargo.toml). The broker's path/query parsing
//! (`percent_decode`, the split into path segments, `query_param`) is private to
//! `broker/src/api.rs` on main and is being extracted into a pure module; wire this target to
//! that module when it lands: replace `virtgate_broker::TODO_PATH_MODULE` and the three function
//! names below with the real ones, uncomment the `[[bin]]` in Cargo.toml, seed
//! `corpus/api_path/`, run it, and record the run in README.md.
//!
//! Arbitrary bytes as the path-and-query of a request URI, parsed the way the API routes it.
//! Properties (adjust the signatures, keep the properties):
//! - nothing panics (main's `percent_decode` slices `&s[i + 1..i + 3]`, which panics when a
//!   `%` is followed by a multi-byte character: `/v1/hosts/%é`, security review §4);
//! - bounded: a decoded segment is never longer than 3 bytes per input byte (U+FFFD for each
//!   invalid byte) and there are never more segments than `/` + 1;
//! - percent-encoding any string and decoding it gives the string back (host names in
//!   `/v1/hosts/{name}` and `?host=` survive any spelling a client may choose);
//! - an encoded `/` (`%2F`) inside a segment stays in that segment: it never creates a route;
//! - `query_param` returns the value of the first `key=` pair and never a piece of another pair.
#![no_main]

use libfuzzer_sys::fuzz_target;
// TODO(api_path): the extracted module and its function names.
use virtgate_broker::TODO_PATH_MODULE::{path_segments, percent_decode, query_param};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (path, query) = text.split_once('?').unwrap_or((text, ""));

    let segments = path_segments(path);
    assert!(segments.len() <= path.matches('/').count() + 1);
    for s in &segments {
        assert!(s.len() <= 3 * path.len());
    }
    let decoded = percent_decode(text);
    assert!(decoded.len() <= 3 * text.len());

    // Round trip: any string, encoded, decodes to itself — as one segment, and as a value.
    let encoded = encode(text);
    assert_eq!(percent_decode(&encoded), text);
    let routed = path_segments(&format!("/v1/hosts/{encoded}"));
    assert_eq!(routed, ["v1", "hosts", text], "{encoded:?}");
    let query_string = format!("a=1&host={encoded}&host=second");
    assert_eq!(query_param(&query_string, "host").map(percent_decode), Some(text.to_string()));

    // Whatever the query, the value found is the one after the first `key=`.
    for key in ["host", "since", "timeout", "limit", "after", "expiring_within"] {
        if let Some(value) = query_param(query, key) {
            let first = query
                .split('&')
                .find_map(|kv| kv.split_once('=').filter(|(k, _)| *k == key));
            assert_eq!(Some(value), first.map(|(_, v)| v));
        }
    }
});

/// Every byte outside RFC 3986's unreserved set as `%XX`.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
