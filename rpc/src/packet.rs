//! Packet framing (`virnetprotocol.x`): a 4-byte big-endian length that counts itself, a 24-byte
//! header, an XDR payload.

use crate::error::{ErrorDomain, ErrorNumber, ErrorReply};
use crate::xdr::Xdr;

/// Smallest legal packet: the length word plus the header.
pub const MIN_LEN: u32 = 28;
/// Largest legal packet: `VIR_NET_MESSAGE_MAX` (33554432) plus the length word.
pub const MAX_LEN: u32 = 33_554_436;
/// Bytes before the payload: the length word plus the header.
pub const HEADER_LEN: usize = 28;

/// The REMOTE program (`remote_protocol.x`): the hypervisor API.
pub const PROGRAM_REMOTE: u32 = 0x2000_8086;
/// The QEMU program (`qemu_protocol.x`): monitor passthrough.
pub const PROGRAM_QEMU: u32 = 0x2000_8087;
/// The LXC program (`lxc_protocol.x`).
pub const PROGRAM_LXC: u32 = 0x0006_8000;
/// The KEEPALIVE program (`virkeepaliveprotocol.x`), ASCII "keep".
pub const PROGRAM_KEEPALIVE: u32 = 0x6b65_6570;

/// KEEPALIVE procedure PING: "are you there?".
pub const KEEPALIVE_PING: u32 = 1;
/// KEEPALIVE procedure PONG: the answer to a PING.
pub const KEEPALIVE_PONG: u32 = 2;

/// The program a packet belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Program {
    /// [`PROGRAM_REMOTE`].
    Remote,
    /// [`PROGRAM_QEMU`].
    Qemu,
    /// [`PROGRAM_LXC`].
    Lxc,
    /// [`PROGRAM_KEEPALIVE`].
    Keepalive,
    /// Any other number (never one of the above when this crate produced it).
    Other(u32),
}

impl Program {
    /// The program number on the wire.
    pub const fn number(self) -> u32 {
        match self {
            Self::Remote => PROGRAM_REMOTE,
            Self::Qemu => PROGRAM_QEMU,
            Self::Lxc => PROGRAM_LXC,
            Self::Keepalive => PROGRAM_KEEPALIVE,
            Self::Other(n) => n,
        }
    }
}

impl From<u32> for Program {
    fn from(n: u32) -> Self {
        match n {
            PROGRAM_REMOTE => Self::Remote,
            PROGRAM_QEMU => Self::Qemu,
            PROGRAM_LXC => Self::Lxc,
            PROGRAM_KEEPALIVE => Self::Keepalive,
            n => Self::Other(n),
        }
    }
}

impl From<Program> for u32 {
    fn from(p: Program) -> u32 {
        p.number()
    }
}

/// `virNetMessageType`: what a packet is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageType {
    /// 0, client → server: a procedure's arguments.
    Call,
    /// 1, server → client: a procedure's result or error.
    Reply,
    /// 2, either way, unanswered: an event or a keepalive.
    Message,
    /// 3, either way: stream data of an earlier call.
    Stream,
    /// 4: a call with file descriptors (UNIX sockets only).
    CallWithFds,
    /// 5: a reply with file descriptors (UNIX sockets only).
    ReplyWithFds,
    /// 6: a hole in a sparse stream.
    StreamHole,
    /// Any other number (never one of the above when this crate produced it).
    Other(u32),
}

impl MessageType {
    /// The number on the wire.
    pub const fn number(self) -> u32 {
        match self {
            Self::Call => 0,
            Self::Reply => 1,
            Self::Message => 2,
            Self::Stream => 3,
            Self::CallWithFds => 4,
            Self::ReplyWithFds => 5,
            Self::StreamHole => 6,
            Self::Other(n) => n,
        }
    }
}

impl From<u32> for MessageType {
    fn from(n: u32) -> Self {
        match n {
            0 => Self::Call,
            1 => Self::Reply,
            2 => Self::Message,
            3 => Self::Stream,
            4 => Self::CallWithFds,
            5 => Self::ReplyWithFds,
            6 => Self::StreamHole,
            n => Self::Other(n),
        }
    }
}

impl From<MessageType> for u32 {
    fn from(t: MessageType) -> u32 {
        t.number()
    }
}

/// `virNetMessageStatus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// 0: a call, a successful reply, a message, or the end of a stream.
    Ok,
    /// 1: a failed reply or stream; the payload is an [`ErrorReply`].
    Error,
    /// 2: stream data, more to come.
    Continue,
    /// Any other number (never one of the above when this crate produced it).
    Other(u32),
}

impl Status {
    /// The number on the wire.
    pub const fn number(self) -> u32 {
        match self {
            Self::Ok => 0,
            Self::Error => 1,
            Self::Continue => 2,
            Self::Other(n) => n,
        }
    }
}

impl From<u32> for Status {
    fn from(n: u32) -> Self {
        match n {
            0 => Self::Ok,
            1 => Self::Error,
            2 => Self::Continue,
            n => Self::Other(n),
        }
    }
}

impl From<Status> for u32 {
    fn from(s: Status) -> u32 {
        s.number()
    }
}

/// Why bytes are not a well-framed packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The length word is outside `MIN_LEN..=MAX_LEN`; libvirt drops the connection.
    #[error("packet length {0} outside libvirt's limits ({MIN_LEN}..={MAX_LEN})")]
    BadLength(u32),
    /// Fewer bytes than a header.
    #[error("only {0} bytes, fewer than the {HEADER_LEN} of a packet header")]
    Short(usize),
    /// The length word does not match the bytes given as one packet.
    #[error("the packet declares {declared} bytes but {actual} were given")]
    LengthMismatch {
        /// The length word.
        declared: u32,
        /// The bytes given.
        actual: usize,
    },
}

impl FrameError {
    /// A short, fixed label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::BadLength(l) if *l < MIN_LEN => "length_too_small",
            Self::BadLength(_) => "length_too_large",
            Self::Short(_) => "truncated",
            Self::LengthMismatch { .. } => "length_mismatch",
        }
    }
}

fn be32(b: &[u8; HEADER_LEN], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The declared length of the packet starting at `buf`, validated, if 4 bytes are there.
pub fn declared_len(buf: &[u8]) -> Option<Result<u32, FrameError>> {
    let word = buf.first_chunk::<4>()?;
    let len = u32::from_be_bytes(*word);
    Some(if (MIN_LEN..=MAX_LEN).contains(&len) {
        Ok(len)
    } else {
        Err(FrameError::BadLength(len))
    })
}

/// The length word and header of a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Total packet size, the length word included ([`packet`] sets it).
    pub len: u32,
    /// Program number.
    pub program: Program,
    /// Program version (1 for every libvirt program).
    pub version: u32,
    /// Procedure number within the program.
    pub procedure: u32,
    /// What the packet is.
    pub kind: MessageType,
    /// Chosen by the client per call; echoed by replies and stream packets.
    pub serial: u32,
    /// Outcome.
    pub status: Status,
}

impl Header {
    /// Reads the header at the start of `buf`, which must hold at least [`HEADER_LEN`] bytes.
    /// Nothing is copied beyond the 28 header bytes and nothing is validated but their presence
    /// (see [`declared_len`] for the length).
    pub fn parse(buf: &[u8]) -> Result<Header, FrameError> {
        buf.first_chunk::<HEADER_LEN>()
            .map(Header::from_bytes)
            .ok_or(FrameError::Short(buf.len()))
    }

    /// Reads a header from exactly [`HEADER_LEN`] bytes.
    pub fn from_bytes(b: &[u8; HEADER_LEN]) -> Header {
        Header {
            len: be32(b, 0),
            program: be32(b, 4).into(),
            version: be32(b, 8),
            procedure: be32(b, 12),
            kind: be32(b, 16).into(),
            serial: be32(b, 20),
            status: be32(b, 24).into(),
        }
    }

    /// Appends the length word and header.
    pub fn write(&self, out: &mut Vec<u8>) {
        for v in [
            self.len,
            self.program.number(),
            self.version,
            self.procedure,
            self.kind.number(),
            self.serial,
            self.status.number(),
        ] {
            out.extend_from_slice(&v.to_be_bytes());
        }
    }

    /// A CALL header (version 1, status OK); [`packet`] fills in the length.
    pub fn call(program: Program, procedure: u32, serial: u32) -> Header {
        Header {
            len: 0,
            program,
            version: 1,
            procedure,
            kind: MessageType::Call,
            serial,
            status: Status::Ok,
        }
    }

    /// A reply header answering `self` (same program, version, procedure, serial).
    pub fn reply(&self, status: Status) -> Header {
        Header {
            len: 0,
            kind: MessageType::Reply,
            status,
            ..*self
        }
    }
}

/// One whole packet, borrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<'a> {
    /// The header.
    pub header: Header,
    /// The XDR payload (or raw stream data) after the header.
    pub payload: &'a [u8],
}

impl<'a> Packet<'a> {
    /// Splits `bytes`, which must be exactly one packet (its length word equal to
    /// `bytes.len()` and within libvirt's limits), into header and payload.
    pub fn parse(bytes: &'a [u8]) -> Result<Packet<'a>, FrameError> {
        let declared = declared_len(bytes).ok_or(FrameError::Short(bytes.len()))??;
        if declared as usize != bytes.len() {
            return Err(FrameError::LengthMismatch {
                declared,
                actual: bytes.len(),
            });
        }
        let (head, payload) = bytes.split_at(HEADER_LEN);
        let header = Header::parse(head)?;
        Ok(Packet { header, payload })
    }
}

/// Builds a whole packet from a header and a payload, fixing the length.
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

/// A CALL packet (version 1, status OK) with an encoded payload.
pub fn call(program: Program, procedure: u32, serial: u32, payload: &[u8]) -> Vec<u8> {
    packet(Header::call(program, procedure, serial), payload)
}

/// A successful REPLY to the call with header `call`, carrying `body`.
pub fn ok_reply<'a>(call: &Header, body: &impl Xdr<'a>) -> Vec<u8> {
    packet(call.reply(Status::Ok), &body.to_xdr())
}

/// An error REPLY to the call with header `call`, in the layout libvirtd uses
/// ([`ErrorReply::new`]).
pub fn error_reply(
    call: &Header,
    code: ErrorNumber,
    domain: ErrorDomain,
    message: &str,
) -> Vec<u8> {
    packet(
        call.reply(Status::Error),
        &ErrorReply::new(code, domain, message).to_xdr(),
    )
}

fn keepalive(procedure: u32) -> Vec<u8> {
    packet(
        Header {
            len: 0,
            program: Program::Keepalive,
            version: 1,
            procedure,
            kind: MessageType::Message,
            serial: 0,
            status: Status::Ok,
        },
        &[],
    )
}

/// The keepalive PING (MESSAGE, serial 0, empty).
pub fn ping() -> Vec<u8> {
    keepalive(KEEPALIVE_PING)
}

/// The PONG answering a keepalive PING (MESSAGE, serial 0, empty).
pub fn pong() -> Vec<u8> {
    keepalive(KEEPALIVE_PONG)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::{AuthListReply, AuthType, ConnectOpenArgs, PROC_AUTH_LIST};
    use crate::test_support::hex;
    use crate::xdr::{put_u32, Reader};

    #[test]
    fn parses_the_captured_connect_open_call() {
        let open = hex("00000038 20008086 00000001 00000001 00000000 00000002 00000000 00000001 0000000f 74657374 3a2f2f2f 64656661 756c7400 00000000");
        let h = Header::parse(&open).unwrap();
        assert_eq!(
            (h.len, h.program, h.procedure, h.kind, h.serial),
            (0x38, Program::Remote, 1, MessageType::Call, 2)
        );
        let mut r = Reader::new(&open[HEADER_LEN..]);
        assert_eq!(r.opt_string(), Ok(Some("test:///default")));
        assert_eq!(r.u32(), Ok(0));
        // The same through the typed message.
        let p = Packet::parse(&open).unwrap();
        assert_eq!(
            ConnectOpenArgs::from_xdr(p.payload),
            Ok(ConnectOpenArgs {
                name: Some("test:///default".into()),
                flags: 0
            })
        );
    }

    #[test]
    fn encodes_pong_and_auth_list_reply_exactly_as_libvirt() {
        assert_eq!(
            pong(),
            hex("0000001c 6b656570 00000001 00000002 00000002 00000000 00000000")
        );
        assert_eq!(
            ping(),
            hex("0000001c 6b656570 00000001 00000001 00000002 00000000 00000000")
        );
        let call = Header::parse(&hex(
            "0000001c 20008086 00000001 00000042 00000000 00000000 00000000",
        ))
        .unwrap();
        assert_eq!(call.procedure, PROC_AUTH_LIST);
        let mut payload = Vec::new();
        put_u32(&mut payload, 1);
        put_u32(&mut payload, 0);
        let expected =
            hex("00000024 20008086 00000001 00000042 00000001 00000000 00000000 00000001 00000000");
        assert_eq!(packet(call.reply(Status::Ok), &payload), expected);
        assert_eq!(
            ok_reply(&call, &AuthListReply(vec![AuthType::None])),
            expected
        );
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
        assert_eq!(FrameError::BadLength(27).reason(), "length_too_small");
        assert_eq!(
            FrameError::BadLength(MAX_LEN + 1).reason(),
            "length_too_large"
        );
    }

    #[test]
    fn a_header_needs_twenty_eight_bytes() {
        let bytes = pong();
        assert_eq!(Header::parse(&bytes[..27]), Err(FrameError::Short(27)));
        assert!(Header::parse(&bytes).is_ok());
    }

    #[test]
    fn a_packet_must_be_exactly_as_long_as_it_declares() {
        let mut bytes = pong();
        assert_eq!(Packet::parse(&bytes).map(|p| p.payload.len()), Ok(0));
        bytes.push(0);
        assert_eq!(
            Packet::parse(&bytes),
            Err(FrameError::LengthMismatch {
                declared: 28,
                actual: 29
            })
        );
        assert_eq!(Packet::parse(&bytes[..3]), Err(FrameError::Short(3)));
        assert_eq!(Packet::parse(&[0, 0, 0, 4]), Err(FrameError::BadLength(4)));
    }

    #[test]
    fn headers_round_trip_with_unknown_numbers_preserved() {
        let h = Header {
            len: 28,
            program: Program::Other(0x0690_0690),
            version: 7,
            procedure: 99_999,
            kind: MessageType::Other(9),
            serial: 0xffff_ffff,
            status: Status::Other(5),
        };
        let mut out = Vec::new();
        h.write(&mut out);
        assert_eq!(Header::parse(&out), Ok(h));
        for n in 0..=7 {
            assert_eq!(MessageType::from(n).number(), n);
            assert_eq!(Status::from(n).number(), n);
        }
        assert_eq!(MessageType::from(6), MessageType::StreamHole);
        assert_eq!(Status::from(2), Status::Continue);
        for p in [
            PROGRAM_REMOTE,
            PROGRAM_QEMU,
            PROGRAM_LXC,
            PROGRAM_KEEPALIVE,
            1,
        ] {
            assert_eq!(u32::from(Program::from(p)), p);
        }
        assert_eq!(Program::from(PROGRAM_LXC), Program::Lxc);
    }

    #[test]
    fn a_reply_echoes_the_call_and_a_call_has_version_one() {
        let c = Header::call(Program::Remote, 60, 11);
        let r = c.reply(Status::Error);
        assert_eq!(
            (
                r.program,
                r.version,
                r.procedure,
                r.serial,
                r.kind,
                r.status
            ),
            (
                Program::Remote,
                1,
                60,
                11,
                MessageType::Reply,
                Status::Error
            )
        );
        assert_eq!(
            call(Program::Remote, 157, 4, &[]),
            hex("0000001c 20008086 00000001 0000009d 00000000 00000004 00000000")
        );
    }
}
