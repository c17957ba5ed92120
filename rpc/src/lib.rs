//! libvirt's RPC wire codec.
//!
//! Owns: libvirt's wire format (a subset of `remote_protocol.x` / `virnetprotocol.x`): packet
//! framing and headers ([`mod@packet`]), XDR encoding and decoding ([`xdr`]), the typed messages
//! exchanged before CONNECT_OPEN ([`remote`]), error replies and libvirt's error numbers
//! ([`mod@error`]), and the REMOTE procedure table with its read-only classification and bounded
//! metric labels ([`procedures`]).
//! Must not: decide anything about access, trust or routing; do I/O except through
//! `PacketStream` (feature `tokio`).
//!
//! Decoding never panics and never allocates more than the input can fill: every length is
//! checked against its XDR bound and against the bytes left before anything is allocated.
//! Sources and captures: the shared notes `libvirt-rpc.md` (§2–4, §10–11) and
//! `secondary-checks.md` §3.2.
//!
//! ```
//! use virtgate_rpc::remote::{AuthListReply, AuthType, ConnectOpenArgs, PROC_AUTH_LIST};
//! use virtgate_rpc::{call, ok_reply, Packet, Program, Xdr};
//!
//! // The client's AUTH_LIST, answered "no authentication step" as libvirtd does.
//! let auth_list = call(Program::Remote, PROC_AUTH_LIST, 0, &[]);
//! let p = Packet::parse(&auth_list)?;
//! let reply = ok_reply(&p.header, &AuthListReply(vec![AuthType::None]));
//! assert_eq!(reply.len(), 36);
//!
//! // A CONNECT_OPEN payload, decoded, changed and re-encoded.
//! let mut open = ConnectOpenArgs { name: Some("qemu://h1/system".into()), flags: 0 };
//! open = ConnectOpenArgs::from_xdr(&open.to_xdr())?;
//! open.name = Some("qemu:///system".into());
//! assert_eq!(open.to_xdr().len(), 4 + 4 + 16 + 4);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod error;
pub mod packet;
pub mod procedures;
pub mod remote;
#[cfg(feature = "tokio")]
mod stream;
pub mod xdr;

pub use error::{ErrorDomain, ErrorLevel, ErrorNumber, ErrorReply, NonnullDomain, NonnullNetwork};
pub use packet::{
    call, declared_len, error_reply, ok_reply, packet, ping, pong, FrameError, Header, MessageType,
    Packet, Program, Status, HEADER_LEN, KEEPALIVE_PING, KEEPALIVE_PONG, MAX_LEN, MIN_LEN,
    PROGRAM_KEEPALIVE, PROGRAM_LXC, PROGRAM_QEMU, PROGRAM_REMOTE,
};
pub use procedures::{procedure_label, program_name, remote_count, Procedure, ReadOnly};
#[cfg(feature = "tokio")]
pub use stream::{PacketStream, ReadError};
pub use xdr::{Reader, Xdr, XdrError};

#[cfg(test)]
mod test_support {
    /// Bytes from hex digits, ignoring whitespace.
    pub fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }
}
