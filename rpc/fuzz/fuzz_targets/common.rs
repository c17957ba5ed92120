//! The property both targets check: whatever decodes re-encodes to bytes that decode to the same
//! value, that encoding is stable, and it is never longer than the input it came from.
#![allow(dead_code)] // each target uses a part of this module

use std::fmt::Debug;

use virtgate_rpc::remote::*;
use virtgate_rpc::{ErrorReply, Header, MessageType, Program, Reader, Status, Xdr};

/// Decodes `payload` as `T`; if that works, checks the round trip and returns the encoding.
pub fn round_trip<T>(payload: &[u8]) -> Option<Vec<u8>>
where
    T: for<'a> Xdr<'a> + PartialEq + Debug,
{
    let mut r = Reader::new(payload);
    let value = T::decode(&mut r).ok()?;
    let consumed = r.position();
    assert!(consumed <= payload.len());
    let encoded = value.to_xdr();
    assert_eq!(encoded.len() % 4, 0, "{value:?} encodes unaligned");
    assert!(
        encoded.len() <= consumed,
        "{value:?} re-encodes to {} bytes from {consumed}",
        encoded.len()
    );
    let again = T::from_xdr(&encoded)
        .unwrap_or_else(|e| panic!("{value:?} re-encoded does not decode: {e}"));
    assert_eq!(again, value);
    assert_eq!(
        again.to_xdr(),
        encoded,
        "encoding of {value:?} is not stable"
    );
    // The strict decoder agrees with the cursor on what is left over.
    match T::from_xdr(payload) {
        Ok(v) => assert_eq!((v, consumed), (value, payload.len())),
        Err(_) => assert!(consumed < payload.len()),
    }
    Some(encoded)
}

/// Every typed message, tried on `payload` whatever its header says.
pub fn every_message(payload: &[u8]) {
    round_trip::<ConnectOpenArgs>(payload);
    round_trip::<AuthListReply>(payload);
    round_trip::<SupportsFeatureArgs>(payload);
    round_trip::<SupportsFeatureReply>(payload);
    round_trip::<SaslInitReply>(payload);
    round_trip::<SaslStartArgs>(payload);
    round_trip::<SaslStartReply>(payload);
    round_trip::<SaslStepArgs>(payload);
    round_trip::<SaslStepReply>(payload);
    round_trip::<PolkitReply>(payload);
    round_trip::<GetLibVersionReply>(payload);
    round_trip::<GetHostnameReply>(payload);
    round_trip::<ErrorReply>(payload);
}

/// The typed message the header says the payload is, round-tripped; the re-encoded payload if
/// the header names a typed message and it decoded.
pub fn message_for(h: &Header, payload: &[u8]) -> Option<Vec<u8>> {
    use MessageType::{Call, Reply, Stream};
    let remote = h.program == Program::Remote;
    match (h.kind, h.status, h.procedure) {
        (Reply | Stream, Status::Error, _) => round_trip::<ErrorReply>(payload),
        (Call, _, p) if remote => match p {
            PROC_CONNECT_OPEN => round_trip::<ConnectOpenArgs>(payload),
            PROC_CONNECT_SUPPORTS_FEATURE => round_trip::<SupportsFeatureArgs>(payload),
            PROC_AUTH_SASL_START => round_trip::<SaslStartArgs>(payload),
            PROC_AUTH_SASL_STEP => round_trip::<SaslStepArgs>(payload),
            _ => None,
        },
        (Reply, Status::Ok, p) if remote => match p {
            PROC_CONNECT_SUPPORTS_FEATURE => round_trip::<SupportsFeatureReply>(payload),
            PROC_AUTH_LIST => round_trip::<AuthListReply>(payload),
            PROC_AUTH_SASL_INIT => round_trip::<SaslInitReply>(payload),
            PROC_AUTH_SASL_START => round_trip::<SaslStartReply>(payload),
            PROC_AUTH_SASL_STEP => round_trip::<SaslStepReply>(payload),
            PROC_AUTH_POLKIT => round_trip::<PolkitReply>(payload),
            PROC_CONNECT_GET_LIB_VERSION => round_trip::<GetLibVersionReply>(payload),
            PROC_CONNECT_GET_HOSTNAME => round_trip::<GetHostnameReply>(payload),
            _ => None,
        },
        _ => None,
    }
}
