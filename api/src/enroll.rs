//! Enrolling hosts through `virtgate agent`: the `/v1/enrollments` and rotation wire types.
//! Tokens appear in exactly one answer — the one that creates them — and never in a listing.

use serde::{Deserialize, Serialize};

use crate::cert::Pin;

/// `POST /v1/enrollments`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollRequest {
    /// The inventory name the host gets (and announces itself by, for mDNS discovery).
    pub host: String,
    /// How long the token may be used; the broker's default (1 h) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<u64>,
    /// Where the agent listens, `ADDR` or `ADDR:PORT`, when it is not found over mDNS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
}

/// The answer to `POST /v1/enrollments`: the only place the token is ever shown.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollResponse {
    pub id: String,
    /// `<id>.<secret>`.
    pub token: String,
    pub host: String,
    /// Unix seconds.
    pub expires_at: i64,
    /// The gateway keys the agent is to accept (`--gateway-pin`).
    pub gateway_pins: Vec<Pin>,
    /// The exact command to run on the host.
    pub command: String,
}

impl std::fmt::Debug for EnrollResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Debug output ends up in logs; the token must not.
        f.debug_struct("EnrollResponse")
            .field("id", &self.id)
            .field("host", &self.host)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// Where a token stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnrollmentState {
    /// Waiting for its agent.
    Pending,
    /// Used: the host is enrolled.
    Spent,
    Revoked,
    Expired,
    /// A state this client does not know.
    #[serde(other)]
    Unknown,
}

impl EnrollmentState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Spent => "spent",
            Self::Revoked => "revoked",
            Self::Expired => "expired",
            Self::Unknown => "unknown",
        }
    }
}

/// One token as `GET /v1/enrollments` lists it: never its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enrollment {
    pub id: String,
    pub host: String,
    pub state: EnrollmentState,
    pub created_at: i64,
    pub expires_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// The last thing that happened to it (an attempt that failed, who used it).
    #[serde(default)]
    pub detail: String,
}

/// `POST /v1/hosts/{name}/rotate`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RotateResponse {
    pub host: String,
    /// The generation of the new per-host secret.
    pub generation: u32,
    /// The gateway keys the agent accepts from now on.
    pub gateway_pins: Vec<Pin>,
}
