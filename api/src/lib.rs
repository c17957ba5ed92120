//! The broker's `/v1` HTTP contract: the types it serialises and the one client that reads them.
//!
//! Owns: the wire vocabulary of the inventory (hosts, endpoints, certificates, findings, events,
//! trust and host states, watch answers), the typed client the CLI uses (hosts, certificates,
//! approve, forget, users, host credentials) and the follower a separate proxy uses to keep a
//! copy of the inventory (and of the users); the host-credentials directory layout; how
//! that client reaches the broker: HTTPS verified by CA or SPKI pin, a client certificate, a
//! bearer token (plain HTTP only to loopback).
//! Must not: decide trust or admission (the broker decides trust; the binary maps it to what the
//! proxy does), link the broker, its store, SQLite or discovery, accept a broker it has not
//! verified, or log a token, a password or a verifier.
#![forbid(unsafe_code)]

pub mod cert;
pub mod client;
pub mod enroll;
pub mod follow;
pub mod model;
pub mod tls;
pub mod users;

pub use cert::{CertInfo, Finding, FindingKind, Pin};
pub use client::{BrokerUrl, Client, ClientError, Scheme, DEFAULT_PORT};
pub use enroll::{EnrollRequest, EnrollResponse, Enrollment, EnrollmentState, RotateResponse};
pub use follow::{Followed, Follower};
pub use model::{
    ApproveRequest, CertificateHistoryEntry, CertificateRow, Endpoint, ErrorBody, Event, EventKind,
    ForgetResponse, Host, HostDetail, HostSource, HostState, ProbeErrorReason, TrustState,
    WatchResponse,
};
pub use tls::{BrokerTrust, ClientIdentity};
