//! The check's framing, as a peer's bytes reach `Frame::decode`: a stream of frames read one
//! after another. Whatever decodes re-encodes to bytes that decode to the same frame (text of a
//! refusal: to the same text once made valid UTF-8), that encoding is stable, and nothing panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use virtgate_pake::wire::{header, Frame, WireError, MAX_BODY};

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while !rest.is_empty() {
        let decoded = Frame::decode(rest);
        // The header alone already decides the bound and the type.
        match (header(rest), &decoded) {
            (Err(e), Err(d)) => assert_eq!(&e, d),
            (Ok((_, len)), _) => assert!(len <= MAX_BODY),
            (Err(e), Ok(_)) => panic!("header refused ({e}) but the frame decoded"),
        }
        let (frame, used) = match decoded {
            Ok(ok) => ok,
            Err(WireError::Incomplete(n)) => {
                assert!(n > 0);
                return;
            }
            Err(_) => return,
        };
        assert!(used >= 3 && used <= rest.len() && used <= 3 + MAX_BODY);
        let encoded = frame.encode();
        let (again, n) = Frame::decode(&encoded)
            .unwrap_or_else(|e| panic!("{} re-encoded does not decode: {e}", frame.name()));
        assert_eq!(n, encoded.len());
        match (&frame, &again) {
            (Frame::Refused(a), Frame::Refused(b)) | (Frame::ProofFailed(a), Frame::ProofFailed(b)) => {
                assert!(a.starts_with(b.as_str()) || a.contains('\u{fffd}'));
            }
            _ => {
                assert_eq!(again, frame);
                assert!(encoded.len() <= used, "{} grew when re-encoded", frame.name());
            }
        }
        assert_eq!(again.encode(), encoded, "encoding of {} is not stable", frame.name());
        rest = &rest[used..];
    }
});
