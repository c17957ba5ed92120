//! What a certificate says, and what is wrong with it: the vocabulary and the judge are
//! `virtgate-pki`'s, so `virtgate pki check` and the inventory report the same findings.

pub use virtgate_pki::{
    certificate_findings, name_finding, parse_certificate, CertError, CertInfo, Finding,
    FindingKind, Role, Windows,
};
