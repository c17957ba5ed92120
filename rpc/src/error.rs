//! libvirt's error replies: `remote_error` / `virNetMessageError` and the numbers in it
//! (`include/libvirt/virterror.h`).
//!
//! These are libvirt's errors on the wire. The crate's own decoding errors are
//! [`crate::XdrError`], [`crate::FrameError`] and, with the `tokio`
//! feature, `ReadError`.

use std::fmt;

use crate::xdr::{put_i32, put_opaque_fixed, put_opt_string, put_string, Reader, Xdr, XdrError};

/// `virErrorNumber`: what went wrong. Values libvirt may add later are kept as they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ErrorNumber(pub i32);

impl ErrorNumber {
    /// `VIR_ERR_OK`.
    pub const OK: Self = Self(0);
    /// `VIR_ERR_INTERNAL_ERROR`.
    pub const INTERNAL_ERROR: Self = Self(1);
    /// `VIR_ERR_NO_SUPPORT`: the server does not know the call (old servers answer AUTH_LIST so).
    pub const NO_SUPPORT: Self = Self(3);
    /// `VIR_ERR_NO_CONNECT`: cannot connect to the hypervisor.
    pub const NO_CONNECT: Self = Self(5);
    /// `VIR_ERR_OPERATION_DENIED`: forbidden on a read-only connection.
    pub const OPERATION_DENIED: Self = Self(29);
    /// `VIR_ERR_SYSTEM_ERROR`: a system call failed.
    pub const SYSTEM_ERROR: Self = Self(38);
    /// `VIR_ERR_RPC`: an RPC-level failure.
    pub const RPC: Self = Self(39);
    /// `VIR_ERR_NO_DOMAIN`: domain not found.
    pub const NO_DOMAIN: Self = Self(42);
    /// `VIR_ERR_AUTH_FAILED`: authentication failed.
    pub const AUTH_FAILED: Self = Self(45);
    /// `VIR_ERR_OPERATION_INVALID`: not applicable at this time.
    pub const OPERATION_INVALID: Self = Self(55);
    /// `VIR_ERR_AUTH_CANCELLED`: authentication cancelled.
    pub const AUTH_CANCELLED: Self = Self(79);
    /// `VIR_ERR_ACCESS_DENIED`: access control refused the operation.
    pub const ACCESS_DENIED: Self = Self(88);
    /// `VIR_ERR_AUTH_UNAVAILABLE`: authentication unavailable.
    pub const AUTH_UNAVAILABLE: Self = Self(94);
}

/// `virErrorDomain`: which part of libvirt raised the error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ErrorDomain(pub i32);

impl ErrorDomain {
    /// `VIR_FROM_NONE`.
    pub const FROM_NONE: Self = Self(0);
    /// `VIR_FROM_RPC`: the RPC layer.
    pub const FROM_RPC: Self = Self(7);
    /// `VIR_FROM_TEST`: the test driver.
    pub const FROM_TEST: Self = Self(12);
    /// `VIR_FROM_REMOTE`: the remote driver.
    pub const FROM_REMOTE: Self = Self(13);
    /// `VIR_FROM_DOMAIN`: domain configuration and the domain API.
    pub const FROM_DOMAIN: Self = Self(20);
    /// `VIR_FROM_AUTH`: authentication.
    pub const FROM_AUTH: Self = Self(46);
    /// `VIR_FROM_ACCESS`: the access control manager.
    pub const FROM_ACCESS: Self = Self(55);
    /// `VIR_FROM_POLKIT`: polkit.
    pub const FROM_POLKIT: Self = Self(60);
}

/// `virErrorLevel`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ErrorLevel(pub i32);

impl ErrorLevel {
    /// `VIR_ERR_NONE`.
    pub const NONE: Self = Self(0);
    /// `VIR_ERR_WARNING`.
    pub const WARNING: Self = Self(1);
    /// `VIR_ERR_ERROR`.
    pub const ERROR: Self = Self(2);
}

macro_rules! xdr_i32_newtype {
    ($($t:ty),*) => {$(
        impl<'a> Xdr<'a> for $t {
            fn encode(&self, out: &mut Vec<u8>) {
                put_i32(out, self.0);
            }
            fn decode(r: &mut Reader<'a>) -> Result<Self, XdrError> {
                r.i32().map(Self)
            }
        }
    )*};
}
xdr_i32_newtype!(ErrorNumber, ErrorDomain, ErrorLevel);

/// `remote_nonnull_domain` / `virNetMessageNonnullDomain`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NonnullDomain {
    /// Domain name.
    pub name: String,
    /// Domain UUID.
    pub uuid: [u8; 16],
    /// Domain id (-1 when inactive).
    pub id: i32,
}

impl<'a> Xdr<'a> for NonnullDomain {
    fn encode(&self, out: &mut Vec<u8>) {
        put_string(out, &self.name);
        put_opaque_fixed(out, &self.uuid);
        put_i32(out, self.id);
    }
    fn decode(r: &mut Reader<'a>) -> Result<Self, XdrError> {
        Ok(Self {
            name: r.read()?,
            uuid: r.opaque_fixed()?,
            id: r.i32()?,
        })
    }
}

/// `remote_nonnull_network` / `virNetMessageNonnullNetwork`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NonnullNetwork {
    /// Network name.
    pub name: String,
    /// Network UUID.
    pub uuid: [u8; 16],
}

impl<'a> Xdr<'a> for NonnullNetwork {
    fn encode(&self, out: &mut Vec<u8>) {
        put_string(out, &self.name);
        put_opaque_fixed(out, &self.uuid);
    }
    fn decode(r: &mut Reader<'a>) -> Result<Self, XdrError> {
        Ok(Self {
            name: r.read()?,
            uuid: r.opaque_fixed()?,
        })
    }
}

/// `remote_error` / `virNetMessageError`: the payload of a REPLY or STREAM with status ERROR.
/// Clients print `message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorReply {
    /// What went wrong.
    pub code: ErrorNumber,
    /// Where.
    pub domain: ErrorDomain,
    /// The text clients print.
    pub message: Option<String>,
    /// Severity.
    pub level: ErrorLevel,
    /// A domain the error is about (libvirt sends none; decoded if present).
    pub dom: Option<NonnullDomain>,
    /// The message's format string (`"%s"`, `"internal error: %s"`, …).
    pub str1: Option<String>,
    /// Extra text, usually the formatted detail.
    pub str2: Option<String>,
    /// Extra text.
    pub str3: Option<String>,
    /// Extra number (-1 when unused).
    pub int1: i32,
    /// Extra number (-1 when unused).
    pub int2: i32,
    /// A network the error is about (libvirt sends none; decoded if present).
    pub net: Option<NonnullNetwork>,
}

impl ErrorReply {
    /// An error at level ERROR whose printed text is `message`, laid out as libvirtd fills
    /// `virNetMessageError` (str1 `"%s"`, str2 the message, int1 and int2 -1, no dom or net).
    pub fn new(code: ErrorNumber, domain: ErrorDomain, message: impl Into<String>) -> Self {
        let message = message.into();
        Self {
            code,
            domain,
            str1: Some("%s".to_owned()),
            str2: Some(message.clone()),
            message: Some(message),
            level: ErrorLevel::ERROR,
            dom: None,
            str3: None,
            int1: -1,
            int2: -1,
            net: None,
        }
    }
}

impl fmt::Display for ErrorReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.message {
            Some(m) => write!(f, "{m} (code {}, domain {})", self.code.0, self.domain.0),
            None => write!(
                f,
                "error without a message (code {}, domain {})",
                self.code.0, self.domain.0
            ),
        }
    }
}

impl<'a> Xdr<'a> for ErrorReply {
    fn encode(&self, out: &mut Vec<u8>) {
        out.reserve(64 + self.message.as_ref().map_or(0, |m| 2 * m.len()));
        self.code.encode(out);
        self.domain.encode(out);
        put_opt_string(out, self.message.as_deref());
        self.level.encode(out);
        self.dom.encode(out);
        put_opt_string(out, self.str1.as_deref());
        put_opt_string(out, self.str2.as_deref());
        put_opt_string(out, self.str3.as_deref());
        put_i32(out, self.int1);
        put_i32(out, self.int2);
        self.net.encode(out);
    }

    fn decode(r: &mut Reader<'a>) -> Result<Self, XdrError> {
        Ok(Self {
            code: r.read()?,
            domain: r.read()?,
            message: r.read()?,
            level: r.read()?,
            dom: r.read()?,
            str1: r.read()?,
            str2: r.read()?,
            str3: r.read()?,
            int1: r.i32()?,
            int2: r.i32()?,
            net: r.read()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::hex;

    #[test]
    fn error_payload_matches_the_captured_layout() {
        let p = ErrorReply::new(
            ErrorNumber::INTERNAL_ERROR,
            ErrorDomain::FROM_RPC,
            "internal error: connection already open",
        )
        .to_xdr();
        let mut r = Reader::new(&p);
        assert_eq!((r.u32(), r.u32()), (Ok(1), Ok(7)));
        assert_eq!(
            r.opt_string(),
            Ok(Some("internal error: connection already open"))
        );
        assert_eq!(r.u32(), Ok(2));
        assert_eq!(r.u32(), Ok(0));
        assert_eq!(p.len() % 4, 0);
    }

    /// The bytes the proxy's `frame::error_payload` produced, field by field.
    #[test]
    fn encodes_exactly_the_bytes_the_proxy_sent_before() {
        let p = ErrorReply::new(ErrorNumber::NO_CONNECT, ErrorDomain::FROM_REMOTE, "no").to_xdr();
        assert_eq!(
            p,
            hex(concat!(
                "00000005 0000000d",          // code, domain
                "00000001 00000002 6e6f0000", // message "no"
                "00000002 00000000",          // level ERROR, dom NULL
                "00000001 00000002 25730000", // str1 "%s"
                "00000001 00000002 6e6f0000", // str2 "no"
                "00000000 ffffffff ffffffff", // str3 NULL, int1, int2
                "00000000"                    // net NULL
            ))
        );
    }

    #[test]
    fn decodes_the_captured_authentication_required_reply() {
        let packet = hex(concat!(
            "00000088 20008086 00000001 00000001 00000001 00000001 00000001",
            "00000027 00000007",
            "00000001 00000017 61757468656e7469636174696f6e20726571756972656400",
            "00000002 00000000",
            "00000001 00000002 25730000",
            "00000001 00000017 61757468656e7469636174696f6e20726571756972656400",
            "00000000 ffffffff ffffffff 00000000"
        ));
        assert_eq!(packet.len(), 0x88);
        let e = ErrorReply::from_xdr(&packet[28..]).unwrap();
        assert_eq!(
            e,
            ErrorReply::new(
                ErrorNumber::RPC,
                ErrorDomain::FROM_RPC,
                "authentication required"
            )
        );
        assert_eq!(e.to_string(), "authentication required (code 39, domain 7)");
    }

    #[test]
    fn an_error_carrying_a_domain_and_a_network_round_trips() {
        let e = ErrorReply {
            dom: Some(NonnullDomain {
                name: "test".into(),
                uuid: [0x66; 16],
                id: 1,
            }),
            net: Some(NonnullNetwork {
                name: "default".into(),
                uuid: [7; 16],
            }),
            str3: Some(String::new()),
            message: None,
            ..ErrorReply::new(ErrorNumber::NO_DOMAIN, ErrorDomain::FROM_TEST, "x")
        };
        let bytes = e.to_xdr();
        assert_eq!(ErrorReply::from_xdr(&bytes), Ok(e));
        // Every cut short of the end is a typed error, never a panic.
        for cut in 0..bytes.len() {
            assert_eq!(
                ErrorReply::from_xdr(&bytes[..cut]),
                Err(XdrError::Truncated),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn a_domain_is_name_uuid_and_id() {
        let bytes = hex("00000004 74657374 6695eb01 f6a48304 79aa97f2 502e193f 00000001");
        let d = NonnullDomain::from_xdr(&bytes).unwrap();
        assert_eq!(
            (d.name.as_str(), d.uuid[0], d.uuid[15], d.id),
            ("test", 0x66, 0x3f, 1)
        );
        assert_eq!(d.to_xdr(), bytes);
    }
}
