//! Step 3: who may reach which host. CONNECT_OPEN names the host (`qemu://h1/system`, or the
//! listener is bound to one, or `proxy.default_host`); the policy decides rw/ro; the host table
//! says whether and how the gateway may connect to it.

use virtgate_pki::Pin;
use virtgate_rpc::{ErrorDomain, ErrorNumber};

use super::outcome::{ConnectionResult, Refusal};
use super::Gateway;
use crate::directory::{Admission, HostTarget, RefuseReason};
use crate::policy::Mode;
use crate::tls::cn_of;

/// A routing decision taken from the `name` a client sent in CONNECT_OPEN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The host named in the URI (lower case), if any.
    pub host: Option<String>,
    /// The `name` to forward: the same URI without the authority.
    pub forwarded: String,
}

/// Splits `DRIVER://[user@]HOST[:port]/PATH[?query][#frag]` into the host and the URI the host
/// itself should open (`DRIVER:///PATH?query#frag`). Names without `://` (or with an empty
/// authority) carry no host and are forwarded unchanged.
pub fn route(name: &str) -> Route {
    let Some((scheme, rest)) = name.split_once("://") else {
        return Route {
            host: None,
            forwarded: name.to_string(),
        };
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(v6) = host_port.strip_prefix('[') {
        v6.split_once(']').map_or(v6, |(h, _)| h)
    } else {
        host_port.split(':').next().unwrap_or_default()
    };
    let tail = if tail.is_empty() { "/" } else { tail };
    let tail = if tail.starts_with('/') {
        tail.to_string()
    } else {
        format!("/{tail}")
    };
    Route {
        host: (!host.is_empty()).then(|| host.to_ascii_lowercase()),
        forwarded: format!("{scheme}://{tail}"),
    }
}

/// Everything the backend step needs: where, how the host is verified, what to forward.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Admitted {
    pub host: String,
    pub forwarded: String,
    pub mode: Mode,
    pub target: HostTarget,
    pub pin: Option<Pin>,
    pub allow_ca: bool,
}

const NO_HOST: &str = "virtgate: the connection URI names no host; add ?name=DRIVER://HOST/PATH, e.g. qemu+tls://GATEWAY/system?name=qemu://HOST/system";

/// Which host the client wants, and the name the host should open.
fn target_of(
    name: &str,
    bound_host: Option<&str>,
    default_host: &str,
) -> Result<(String, String), Refusal> {
    let route = route(name);
    match (bound_host, route.host) {
        (Some(bound), Some(_)) => Ok((bound.to_string(), route.forwarded)),
        (Some(bound), None) => Ok((bound.to_string(), name.to_string())),
        (None, Some(host)) => Ok((host, route.forwarded)),
        (None, None) if !default_host.is_empty() => {
            Ok((default_host.to_ascii_lowercase(), name.to_string()))
        }
        (None, None) => Err(Refusal::no_connect(
            ConnectionResult::NoHost,
            NO_HOST,
            format!("CONNECT_OPEN name {name:?} names no host and proxy.default_host is empty"),
        )),
    }
}

/// Decides whether `identity` may open `name`, and how. `on_host` and `on_mode` record the
/// decision as soon as it is known, for the connection's log line.
pub(crate) fn decide(
    gateway: &Gateway,
    identity: &str,
    name: &str,
    bound_host: Option<&str>,
    mut on_host: impl FnMut(&str),
    mut on_mode: impl FnMut(Mode),
) -> Result<Admitted, Refusal> {
    let (host, forwarded) = target_of(name, bound_host, &gateway.config.default_host)?;
    on_host(&host);
    let Some(mode) = gateway.policy.decide(identity, &host) else {
        gateway
            .metrics
            .auth_failures
            .with_label_values(&["policy", "denied"])
            .inc();
        return Err(Refusal {
            result: ConnectionResult::Denied,
            code: ErrorNumber::ACCESS_DENIED,
            domain: ErrorDomain::FROM_ACCESS,
            message: format!(
                "virtgate: access to host {host} denied for {}",
                cn_of(identity)
            ),
            detail: "no proxy.rules entry allows this identity on this host".into(),
        });
    };
    on_mode(mode);
    let Some(target) = gateway.hosts.borrow().get(&host).cloned() else {
        return Err(Refusal::no_connect(
            ConnectionResult::UnknownHost,
            format!(
                "virtgate: unknown host {host}; `virtgate hosts` lists the hosts this gateway knows"
            ),
            "not in the inventory",
        ));
    };
    let (pin, allow_ca) = match &target.admission {
        Admission::Connect { pin, allow_ca } => (*pin, *allow_ca),
        Admission::Refuse {
            reason,
            message,
            detail,
        } => {
            let result = match reason {
                RefuseReason::Unreachable => ConnectionResult::BackendUnreachable,
                RefuseReason::Untrusted => ConnectionResult::UntrustedHost,
            };
            return Err(Refusal::no_connect(result, message.clone(), detail.clone()));
        }
    };
    Ok(Admitted {
        host,
        forwarded,
        mode,
        target,
        pin,
        allow_ca,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(name: &str) -> (Option<&'static str>, String) {
        let route = route(name);
        (
            route.host.map(|h| &*Box::leak(h.into_boxed_str())),
            route.forwarded,
        )
    }

    #[test]
    fn the_host_is_taken_out_and_the_rest_forwarded() {
        assert_eq!(r("qemu://h1/system"), (Some("h1"), "qemu:///system".into()));
        assert_eq!(
            r("test://H1.example.com/default?x=1#f"),
            (Some("h1.example.com"), "test:///default?x=1#f".into())
        );
        assert_eq!(
            r("qemu+ssh://root@h2:2222/session"),
            (Some("h2"), "qemu+ssh:///session".into())
        );
        assert_eq!(
            r("xen://[fd00::1]:16514/"),
            (Some("fd00::1"), "xen:///".into())
        );
        assert_eq!(r("lxc://h3"), (Some("h3"), "lxc:///".into()));
    }

    #[test]
    fn names_without_a_host_are_forwarded_unchanged() {
        assert_eq!(r("qemu:///system"), (None, "qemu:///system".into()));
        assert_eq!(r(""), (None, "".into()));
        assert_eq!(r("test:///default"), (None, "test:///default".into()));
    }
}
