//! Certificates as the inventory reports them, and the findings vocabulary: defined once, in
//! `virtgate-pki`, and carried on the wire as they are.

pub use virtgate_pki::{CertInfo, Finding, FindingKind, Pin};
