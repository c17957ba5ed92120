//! The broker: the inventory of virtualization hosts and of the certificates they present.
//!
//! Owns: consuming discovery events and static hosts, probing host certificates, findings,
//! trust pins, the durable store, the HTTP API and `/metrics`.
//! Must not: relay libvirt traffic (that is `virtgate-proxy`), or trust anything a host
//! announces about itself over mDNS.
//!
//! Status: not built yet — issue 3 fills this crate.
#![forbid(unsafe_code)]
