//! libvirt RPC framing (see shared notes libvirt-rpc.md §2–§4): a 4-byte big-endian length that
//! counts itself, a 24-byte header, an XDR payload.

/// Smallest legal packet: the length word plus the header.
pub const MIN_LEN: u32 = 28;
/// Largest legal packet: `VIR_NET_MESSAGE_MAX` (33554432) plus the length word.
pub const MAX_LEN: u32 = 33_554_436;
pub const HEADER_LEN: usize = 28;

pub const PROGRAM_REMOTE: u32 = 0x2000_8086;
pub const PROGRAM_QEMU: u32 = 0x2000_8087;
pub const PROGRAM_LXC: u32 = 0x0006_8000;
pub const PROGRAM_KEEPALIVE: u32 = 0x6b65_6570;

pub const TYPE_CALL: u32 = 0;
pub const TYPE_REPLY: u32 = 1;
pub const TYPE_MESSAGE: u32 = 2;
pub const TYPE_STREAM: u32 = 3;
pub const TYPE_STREAM_HOLE: u32 = 6;

pub const STATUS_OK: u32 = 0;
pub const STATUS_ERROR: u32 = 1;

pub const PROC_CONNECT_OPEN: u32 = 1;
pub const PROC_CONNECT_CLOSE: u32 = 2;
pub const PROC_CONNECT_SUPPORTS_FEATURE: u32 = 60;
pub const PROC_AUTH_LIST: u32 = 66;
pub const PROC_AUTH_SASL_INIT: u32 = 67;
pub const PROC_AUTH_SASL_START: u32 = 68;
pub const PROC_AUTH_SASL_STEP: u32 = 69;
pub const PROC_AUTH_POLKIT: u32 = 70;
pub const KEEPALIVE_PING: u32 = 1;
pub const KEEPALIVE_PONG: u32 = 2;

pub const FEATURE_PROGRAM_KEEPALIVE: u32 = 10;
pub const AUTH_NONE: u32 = 0;
pub const AUTH_SASL: u32 = 1;
/// `REMOTE_DRIVER_OPEN_RO`: the daemon opens the connection read-only and enforces it.
pub const OPEN_FLAG_READ_ONLY: u32 = 1;

/// virErrorNumber / virErrorDomain values used in error replies.
pub mod err {
    pub const INTERNAL_ERROR: i32 = 1;
    pub const NO_CONNECT: i32 = 5;
    pub const OPERATION_DENIED: i32 = 29;
    pub const SYSTEM_ERROR: i32 = 38;
    pub const RPC: i32 = 39;
    pub const AUTH_FAILED: i32 = 45;
    pub const AUTH_UNAVAILABLE: i32 = 94;
    pub const ACCESS_DENIED: i32 = 88;
    pub const FROM_RPC: i32 = 7;
    pub const FROM_REMOTE: i32 = 13;
    pub const FROM_ACCESS: i32 = 55;
}

/// The fixed header of a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub len: u32,
    pub program: u32,
    pub version: u32,
    pub procedure: u32,
    pub kind: u32,
    pub serial: u32,
    pub status: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("packet length {0} outside libvirt's limits ({MIN_LEN}..={MAX_LEN})")]
    BadLength(u32),
}

impl FrameError {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::BadLength(l) if *l < MIN_LEN => "length_too_small",
            Self::BadLength(_) => "length_too_large",
        }
    }
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The declared length of the packet starting at `buf`, validated, if 4 bytes are there.
pub fn declared_len(buf: &[u8]) -> Option<Result<u32, FrameError>> {
    if buf.len() < 4 {
        return None;
    }
    let len = be32(buf, 0);
    Some(if (MIN_LEN..=MAX_LEN).contains(&len) {
        Ok(len)
    } else {
        Err(FrameError::BadLength(len))
    })
}

impl Header {
    /// Parses the header of a packet (at least 28 bytes).
    pub fn parse(buf: &[u8]) -> Header {
        Header {
            len: be32(buf, 0),
            program: be32(buf, 4),
            version: be32(buf, 8),
            procedure: be32(buf, 12),
            kind: be32(buf, 16),
            serial: be32(buf, 20),
            status: be32(buf, 24),
        }
    }

    pub fn write(&self, out: &mut Vec<u8>) {
        for v in [
            self.len,
            self.program,
            self.version,
            self.procedure,
            self.kind,
            self.serial,
            self.status,
        ] {
            out.extend_from_slice(&v.to_be_bytes());
        }
    }

    /// A reply header answering `self` (same program, version, procedure, serial).
    pub fn reply(&self, status: u32) -> Header {
        Header {
            len: 0,
            kind: TYPE_REPLY,
            status,
            ..*self
        }
    }
}

/// Builds a whole packet from a header and an XDR payload, fixing the length.
pub fn packet(header: Header, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    Header {
        len: (HEADER_LEN + payload.len()) as u32,
        ..header
    }
    .write(&mut out);
    out.extend_from_slice(payload);
    out
}

/// XDR encoding helpers.
pub mod xdr {
    pub fn u32(out: &mut Vec<u8>, v: u32) {
        out.extend_from_slice(&v.to_be_bytes());
    }
    pub fn i32(out: &mut Vec<u8>, v: i32) {
        out.extend_from_slice(&v.to_be_bytes());
    }
    pub fn string(out: &mut Vec<u8>, s: &str) {
        u32(out, s.len() as u32);
        out.extend_from_slice(s.as_bytes());
        out.resize(out.len() + (4 - s.len() % 4) % 4, 0);
    }
    /// `remote_string`: optional string.
    pub fn opt_string(out: &mut Vec<u8>, s: Option<&str>) {
        match s {
            None => u32(out, 0),
            Some(s) => {
                u32(out, 1);
                string(out, s);
            }
        }
    }

    /// A cursor over an XDR payload.
    pub struct Reader<'a> {
        buf: &'a [u8],
        at: usize,
    }

    impl<'a> Reader<'a> {
        pub fn new(buf: &'a [u8]) -> Self {
            Self { buf, at: 0 }
        }
        pub fn u32(&mut self) -> Option<u32> {
            let b = self.buf.get(self.at..self.at + 4)?;
            self.at += 4;
            Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        }
        pub fn string(&mut self) -> Option<&'a str> {
            let len = self.u32()? as usize;
            if len > 4_194_304 {
                return None;
            }
            let bytes = self.buf.get(self.at..self.at.checked_add(len)?)?;
            self.at += len + (4 - len % 4) % 4;
            std::str::from_utf8(bytes).ok()
        }
        pub fn opt_string(&mut self) -> Option<Option<&'a str>> {
            match self.u32()? {
                0 => Some(None),
                1 => self.string().map(Some),
                _ => None,
            }
        }
    }
}

/// The payload of an error reply (`virNetMessageError`), which clients print as is.
pub fn error_payload(code: i32, domain: i32, message: &str) -> Vec<u8> {
    let mut p = Vec::with_capacity(64 + message.len());
    xdr::i32(&mut p, code);
    xdr::i32(&mut p, domain);
    xdr::opt_string(&mut p, Some(message));
    xdr::i32(&mut p, 2); // level: error
    xdr::u32(&mut p, 0); // dom: none
    xdr::opt_string(&mut p, Some("%s"));
    xdr::opt_string(&mut p, Some(message));
    xdr::opt_string(&mut p, None);
    xdr::i32(&mut p, -1);
    xdr::i32(&mut p, -1);
    xdr::u32(&mut p, 0); // net: none
    p
}

/// An error REPLY to the call with header `call`.
pub fn error_reply(call: &Header, code: i32, domain: i32, message: &str) -> Vec<u8> {
    packet(
        call.reply(STATUS_ERROR),
        &error_payload(code, domain, message),
    )
}

/// The PONG answering a keepalive PING.
pub fn pong() -> Vec<u8> {
    packet(
        Header {
            len: 0,
            program: PROGRAM_KEEPALIVE,
            version: 1,
            procedure: KEEPALIVE_PONG,
            kind: TYPE_MESSAGE,
            serial: 0,
            status: STATUS_OK,
        },
        &[],
    )
}

/// A CALL packet.
pub fn call(program: u32, procedure: u32, serial: u32, payload: &[u8]) -> Vec<u8> {
    packet(
        Header {
            len: 0,
            program,
            version: 1,
            procedure,
            kind: TYPE_CALL,
            serial,
            status: STATUS_OK,
        },
        payload,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn parses_the_captured_connect_open_call() {
        let open = hex("00000038 20008086 00000001 00000001 00000000 00000002 00000000 00000001 0000000f 74657374 3a2f2f2f 64656661 756c7400 00000000");
        let h = Header::parse(&open);
        assert_eq!(
            (h.len, h.program, h.procedure, h.kind, h.serial),
            (0x38, PROGRAM_REMOTE, 1, TYPE_CALL, 2)
        );
        let mut r = xdr::Reader::new(&open[HEADER_LEN..]);
        assert_eq!(r.opt_string(), Some(Some("test:///default")));
        assert_eq!(r.u32(), Some(0));
    }

    #[test]
    fn encodes_pong_and_auth_list_reply_exactly_as_libvirt() {
        assert_eq!(
            pong(),
            hex("0000001c 6b656570 00000001 00000002 00000002 00000000 00000000")
        );
        let call = Header::parse(&hex(
            "0000001c 20008086 00000001 00000042 00000000 00000000 00000000",
        ));
        let mut payload = Vec::new();
        xdr::u32(&mut payload, 1);
        xdr::u32(&mut payload, AUTH_NONE);
        assert_eq!(
            packet(call.reply(STATUS_OK), &payload),
            hex("00000024 20008086 00000001 00000042 00000001 00000000 00000000 00000001 00000000")
        );
    }

    #[test]
    fn error_payload_matches_the_captured_layout() {
        let p = error_payload(1, 7, "internal error: connection already open");
        let mut r = xdr::Reader::new(&p);
        assert_eq!((r.u32(), r.u32()), (Some(1), Some(7)));
        assert_eq!(
            r.opt_string(),
            Some(Some("internal error: connection already open"))
        );
        assert_eq!(r.u32(), Some(2));
        assert_eq!(r.u32(), Some(0));
        assert_eq!(p.len() % 4, 0);
    }

    #[test]
    fn lengths_outside_libvirts_limits_are_refused() {
        assert_eq!(declared_len(&[0, 0, 0]), None);
        assert_eq!(
            declared_len(&27u32.to_be_bytes()),
            Some(Err(FrameError::BadLength(27)))
        );
        assert_eq!(declared_len(&28u32.to_be_bytes()), Some(Ok(28)));
        assert_eq!(declared_len(&MAX_LEN.to_be_bytes()), Some(Ok(MAX_LEN)));
        assert_eq!(
            declared_len(&(MAX_LEN + 1).to_be_bytes()),
            Some(Err(FrameError::BadLength(MAX_LEN + 1)))
        );
    }
}
