//! The inventory's vocabulary. The wire contract (`virtgate-api`) defines it; the broker keeps
//! its inventory in those types and serialises them as they are.

pub use virtgate_api::{
    CertificateHistoryEntry, CertificateRow, Endpoint, Event, EventKind, Host, HostDetail,
    HostSource, HostState, TrustState, WatchResponse,
};
