//! The proxy: the TLS front door that relays libvirt RPC from authenticated clients to hosts.
//!
//! Owns: client TLS termination and authentication, the libvirt RPC handshake subset it answers
//! itself (AUTH_LIST, CONNECT_OPEN routing), per-identity policy, backend mTLS and the relay.
//! Must not: decide host trust on its own (the broker's inventory does), or log secrets.
//!
//! Status: not built yet — issue 4 fills this crate.
#![forbid(unsafe_code)]
