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
