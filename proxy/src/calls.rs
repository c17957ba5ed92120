//! What a client may call once its connection is open. The gateway checked who the client is and
//! what it may do before it forwarded CONNECT_OPEN; nothing relayed afterwards may change that.
//!
//! - Calls that change who the connection is or what it may do — another CONNECT_OPEN, any
//!   AUTH_* procedure, CONNECT_SET_IDENTITY — are answered by the gateway with an error and the
//!   connection is closed: no ordinary client sends them after opening.
//! - For read-only identities, every REMOTE procedure libvirt refuses on read-only connections
//!   (the table's `read_only_connection` column), every procedure the table does not know, and
//!   the QEMU and LXC programs (monitor commands, namespaces) are answered with libvirt's own
//!   read-only error, as a second layer under libvirtd's check; the connection goes on.
//! - Programs other than REMOTE, KEEPALIVE, QEMU and LXC are refused for everyone unless
//!   `proxy.allowed_programs` lists them.

use virtgate_rpc::remote::{
    PROC_AUTH_LIST, PROC_AUTH_POLKIT, PROC_AUTH_SASL_INIT, PROC_AUTH_SASL_START,
    PROC_AUTH_SASL_STEP, PROC_CONNECT_OPEN,
};
use virtgate_rpc::{ErrorDomain, ErrorNumber, Header, MessageType, Procedure, Program, ReadOnly};

use crate::policy::Mode;

/// REMOTE_PROC_CONNECT_SET_IDENTITY: sets the identity the daemon checks access for.
const PROC_CONNECT_SET_IDENTITY: u32 = 419;

/// Why a call was answered by the gateway instead of the host; the `reason` label of
/// `virtgate_proxy_calls_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusedCall {
    /// A second CONNECT_OPEN.
    Reopen,
    /// AUTH_LIST, AUTH_SASL_*, AUTH_POLKIT after the connection is open.
    Authenticate,
    /// CONNECT_SET_IDENTITY.
    Identity,
    /// A write (or unknown) procedure from a read-only identity.
    ReadOnly,
    /// A program this identity may not use.
    Program,
}

impl RefusedCall {
    pub const ALL: [RefusedCall; 5] = [
        Self::Reopen,
        Self::Authenticate,
        Self::Identity,
        Self::ReadOnly,
        Self::Program,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reopen => "reopen",
            Self::Authenticate => "auth",
            Self::Identity => "identity",
            Self::ReadOnly => "read_only",
            Self::Program => "program",
        }
    }

    /// Whether the connection must end after the refusal.
    pub fn closes(self) -> bool {
        matches!(self, Self::Reopen | Self::Authenticate | Self::Identity)
    }
}

/// The gateway's answer to a call it does not forward.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: RefusedCall,
    pub code: ErrorNumber,
    pub domain: ErrorDomain,
    pub message: String,
}

/// The rules for one open connection.
#[derive(Debug, Clone)]
pub(crate) struct CallGuard {
    mode: Mode,
    host: String,
    extra_programs: Vec<u32>,
}

impl CallGuard {
    pub(crate) fn new(mode: Mode, host: &str, extra_programs: &[u32]) -> Self {
        Self {
            mode,
            host: host.to_string(),
            extra_programs: extra_programs.to_vec(),
        }
    }

    /// `None`: forward the packet; `Some`: answer it with the refusal instead.
    pub(crate) fn check(&self, h: &Header) -> Option<Refusal> {
        if h.kind != MessageType::Call {
            return None;
        }
        match h.program {
            Program::Remote => self.remote(h.procedure),
            Program::Keepalive => None,
            Program::Qemu | Program::Lxc if self.mode == Mode::Rw => None,
            Program::Qemu | Program::Lxc => Some(self.read_only(format!(
                "the {} program",
                virtgate_rpc::program_name(h.program)
            ))),
            Program::Other(n) if self.extra_programs.contains(&n) => None,
            Program::Other(n) => Some(Refusal {
                reason: RefusedCall::Program,
                code: ErrorNumber::OPERATION_DENIED,
                domain: ErrorDomain::FROM_REMOTE,
                message: format!(
                    "operation forbidden: virtgate does not relay RPC program {n:#x}; an operator can allow it with proxy.allowed_programs"
                ),
            }),
        }
    }

    fn remote(&self, procedure: u32) -> Option<Refusal> {
        let closing = |reason, what: &str| {
            Refusal {
            reason,
            code: ErrorNumber::OPERATION_DENIED,
            domain: ErrorDomain::FROM_REMOTE,
            message: format!(
                "operation forbidden: virtgate does not relay {what} on an open connection; the gateway closes it — open a new connection"
            ),
        }
        };
        match procedure {
            PROC_CONNECT_OPEN => {
                return Some(closing(RefusedCall::Reopen, "a second CONNECT_OPEN"))
            }
            PROC_AUTH_LIST | PROC_AUTH_SASL_INIT | PROC_AUTH_SASL_START | PROC_AUTH_SASL_STEP
            | PROC_AUTH_POLKIT => {
                return Some(closing(RefusedCall::Authenticate, "authentication calls"))
            }
            PROC_CONNECT_SET_IDENTITY => {
                return Some(closing(RefusedCall::Identity, "CONNECT_SET_IDENTITY"))
            }
            _ => {}
        }
        if self.mode == Mode::Rw {
            return None;
        }
        let procedure = Procedure(procedure);
        match procedure.read_only() {
            ReadOnly::Allowed | ReadOnly::Conditional | ReadOnly::NotApplicable => None,
            ReadOnly::Denied => {
                let api = procedure
                    .public_api()
                    .or(procedure.name())
                    .unwrap_or("this call");
                Some(self.read_only(api.to_string()))
            }
            ReadOnly::Unknown => Some(self.read_only(format!(
                "procedure {} (unknown to the gateway)",
                procedure.0
            ))),
        }
    }

    /// libvirt's own words for a write on a read-only connection, and whose rule made it one.
    fn read_only(&self, what: String) -> Refusal {
        Refusal {
            reason: RefusedCall::ReadOnly,
            code: ErrorNumber::OPERATION_DENIED,
            domain: ErrorDomain::FROM_REMOTE,
            message: format!(
                "operation forbidden: read only access prevents {what} (virtgate: this identity has read-only access to {})",
                self.host
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(program: Program, procedure: u32) -> Header {
        Header::call(program, procedure, 9)
    }

    #[test]
    fn calls_that_change_who_the_connection_is_are_refused_for_everyone_and_close_it() {
        for mode in [Mode::Rw, Mode::Ro] {
            let guard = CallGuard::new(mode, "h1", &[]);
            for (procedure, reason) in [
                (PROC_CONNECT_OPEN, RefusedCall::Reopen),
                (PROC_AUTH_LIST, RefusedCall::Authenticate),
                (PROC_AUTH_SASL_START, RefusedCall::Authenticate),
                (PROC_AUTH_POLKIT, RefusedCall::Authenticate),
                (PROC_CONNECT_SET_IDENTITY, RefusedCall::Identity),
            ] {
                let refusal = guard.check(&call(Program::Remote, procedure)).unwrap();
                assert_eq!(refusal.reason, reason, "{mode:?} {procedure}");
                assert!(refusal.reason.closes());
            }
        }
    }

    #[test]
    fn read_only_identities_get_libvirts_own_error_for_writes_and_unknown_calls() {
        let guard = CallGuard::new(Mode::Ro, "h1", &[]);
        let suspend = guard.check(&call(Program::Remote, 34)).unwrap();
        assert_eq!(suspend.reason, RefusedCall::ReadOnly);
        assert!(!suspend.reason.closes());
        assert!(suspend
            .message
            .contains("read only access prevents virDomainSuspend"));
        assert!(
            guard.check(&call(Program::Remote, 59)).is_none(),
            "GET_HOSTNAME reads"
        );
        assert!(
            guard.check(&call(Program::Remote, 14)).is_none(),
            "conditional: libvirtd decides"
        );
        assert!(
            guard.check(&call(Program::Remote, 99_999)).is_some(),
            "unknown: refused"
        );
        for program in [Program::Qemu, Program::Lxc] {
            let refusal = guard.check(&call(program, 1)).unwrap();
            assert_eq!(refusal.reason, RefusedCall::ReadOnly);
        }
    }

    #[test]
    fn read_write_identities_may_call_anything_but_identity_changes() {
        let guard = CallGuard::new(Mode::Rw, "h1", &[]);
        for (program, procedure) in [
            (Program::Remote, 34),
            (Program::Remote, 99_999),
            (Program::Qemu, 1),
            (Program::Lxc, 1),
            (Program::Keepalive, 1),
        ] {
            assert!(
                guard.check(&call(program, procedure)).is_none(),
                "{program:?} {procedure}"
            );
        }
    }

    #[test]
    fn unknown_programs_are_refused_unless_configured() {
        let closed = CallGuard::new(Mode::Rw, "h1", &[]);
        let refusal = closed.check(&call(Program::Other(0x1234), 1)).unwrap();
        assert_eq!(refusal.reason, RefusedCall::Program);
        assert!(refusal.message.contains("proxy.allowed_programs"));
        let open = CallGuard::new(Mode::Rw, "h1", &[0x1234]);
        assert!(open.check(&call(Program::Other(0x1234), 1)).is_none());
    }

    #[test]
    fn only_calls_are_judged() {
        let guard = CallGuard::new(Mode::Ro, "h1", &[]);
        let mut stream = call(Program::Remote, 34);
        stream.kind = MessageType::Stream;
        assert!(guard.check(&stream).is_none());
    }
}
