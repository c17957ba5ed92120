//! Step 3: who may reach which host. CONNECT_OPEN names the host (`qemu://h1/system`, or the
//! listener is bound to one, or `proxy.default_host`); the policy decides rw/ro; the host table
//! says whether and how the gateway may connect to it.

use virtgate_pki::Pin;
use virtgate_rpc::{ErrorDomain, ErrorNumber};

use super::outcome::{ConnectionResult, Refusal};
use super::Gateway;
use crate::directory::{Admission, HostTarget, RefuseReason};
use crate::policy::{Identity, Mode};

/// A routing decision taken from the `name` a client sent in CONNECT_OPEN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The host named in the URI (lower case, one trailing dot dropped), if any.
    pub host: Option<String>,
    /// The `name` to forward: `DRIVER:///PATH[?QUERY]`, canonical and minimal.
    pub forwarded: String,
}

/// Which connection names may pass the gateway (`proxy.allowed_drivers`,
/// `proxy.allowed_test_paths`, `proxy.allowed_uri_parameters`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UriRules {
    pub drivers: Vec<String>,
    pub test_paths: Vec<String>,
    pub parameters: Vec<String>,
}

/// Why a connection name is refused; the message tells the client what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UriError {
    #[error("virtgate: the connection name {0:?} names no driver; use DRIVER://HOST/PATH, e.g. qemu://HOST/system")]
    NoDriver(String),
    #[error("virtgate: driver {0:?} is not allowed through this gateway (proxy.allowed_drivers)")]
    DriverNotAllowed(String),
    #[error("virtgate: URI parameter {0:?} is not allowed through this gateway: parameters such as socket=, command=, netcat= and pkipath= make the host's daemon open connections or run programs (proxy.allowed_uri_parameters)")]
    ParameterNotAllowed(String),
    #[error("virtgate: the test driver is allowed only as {allowed} through this gateway, not with path {path:?} (proxy.allowed_test_paths)")]
    TestPathNotAllowed { path: String, allowed: String },
    #[error("virtgate: a connection name must not carry a #fragment")]
    Fragment,
}

/// Canonicalises `DRIVER[+TRANSPORT]://[user@]HOST[:port]/PATH[?QUERY]`: the host is taken out,
/// the driver must be allowed, the transport and the authority are dropped (the gateway reaches
/// the host itself), the path goes as given, and query parameters pass only when allowed.
pub fn canonical(name: &str, rules: &UriRules) -> Result<Route, UriError> {
    let (scheme, rest) = name
        .split_once("://")
        .ok_or_else(|| UriError::NoDriver(name.to_string()))?;
    let driver = scheme
        .split('+')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    if driver.is_empty() || !driver.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(UriError::NoDriver(name.to_string()));
    }
    if !rules
        .drivers
        .iter()
        .any(|d| d.eq_ignore_ascii_case(&driver))
    {
        return Err(UriError::DriverNotAllowed(driver));
    }
    if rest.contains('#') {
        return Err(UriError::Fragment);
    }
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (path, query) = match tail.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (tail, None),
    };
    let path = if path.is_empty() { "/" } else { path };
    if driver == "test" && !rules.test_paths.iter().any(|p| p == path) {
        let allowed = rules
            .test_paths
            .iter()
            .map(|p| format!("test://{p}"))
            .collect::<Vec<_>>()
            .join(", ");
        let path = path.to_string();
        return Err(UriError::TestPathNotAllowed { path, allowed });
    }
    let query = query.filter(|q| !q.is_empty());
    for parameter in query.into_iter().flat_map(|q| q.split('&')) {
        let key = parameter.split('=').next().unwrap_or_default();
        if !rules.parameters.iter().any(|p| p == key) {
            return Err(UriError::ParameterNotAllowed(key.to_string()));
        }
    }
    let forwarded = match query {
        Some(query) => format!("{driver}://{path}?{query}"),
        None => format!("{driver}://{path}"),
    };
    Ok(Route {
        host: host_of(authority),
        forwarded,
    })
}

/// The host of an authority (`user@host:port`, `[v6]:port`), lower case, one trailing dot off.
fn host_of(authority: &str) -> Option<String> {
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(v6) = host_port.strip_prefix('[') {
        v6.split_once(']').map_or(v6, |(h, _)| h)
    } else {
        host_port.split(':').next().unwrap_or_default()
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
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
    /// The check after TLS (a host enrolled through its agent).
    pub secondary: Option<crate::directory::Secondary>,
}

const NO_HOST: &str = "virtgate: the connection URI names no host; add ?name=DRIVER://HOST/PATH, e.g. qemu+tls://GATEWAY/system?name=qemu://HOST/system";

/// Which host the client wants, and the name the host should open.
fn target_of(
    name: &str,
    bound_host: Option<&str>,
    default_host: &str,
    rules: &UriRules,
) -> Result<(String, String), Refusal> {
    let route = canonical(name, rules).map_err(|e| {
        Refusal::no_connect(
            ConnectionResult::BadUri,
            e.to_string(),
            format!("CONNECT_OPEN name {name:?} refused"),
        )
    })?;
    match (bound_host, route.host) {
        (Some(bound), _) => Ok((bound.to_string(), route.forwarded)),
        (None, Some(host)) => Ok((host, route.forwarded)),
        (None, None) if !default_host.is_empty() => {
            Ok((default_host.to_ascii_lowercase(), route.forwarded))
        }
        (None, None) => Err(Refusal::no_connect(
            ConnectionResult::NoHost,
            NO_HOST,
            format!("CONNECT_OPEN name {name:?} names no host and proxy.default_host is empty"),
        )),
    }
}

/// Decides whether a connection with `identities` may open `name`, and how. `on_host` and `on_mode` record the
/// decision as soon as it is known, for the connection's log line.
pub(crate) fn decide(
    gateway: &Gateway,
    identities: &[Identity],
    name: &str,
    bound_host: Option<&str>,
    mut on_host: impl FnMut(&str),
    mut on_mode: impl FnMut(Mode),
) -> Result<Admitted, Refusal> {
    let (host, forwarded) = target_of(
        name,
        bound_host,
        &gateway.config.default_host,
        &gateway.uri_rules,
    )?;
    on_host(&host);
    let Some(mode) = gateway.policy.decide_for(identities, &host) else {
        let who: Vec<String> = identities.iter().map(Identity::short).collect();
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
                "virtgate: access to host {host} denied for {} ({}: no proxy.rules entry allows it)",
                who.join(" & "),
                crate::policy::describe(identities)
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
    let (pin, allow_ca, secondary) = match &target.admission {
        Admission::Connect {
            pin,
            allow_ca,
            secondary,
        } => (*pin, *allow_ca, *secondary),
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
        secondary,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> UriRules {
        UriRules {
            drivers: ["qemu", "test", "lxc", "xen"].map(String::from).to_vec(),
            test_paths: vec!["/default".into()],
            parameters: vec![],
        }
    }

    fn r(name: &str) -> Result<(Option<String>, String), UriError> {
        canonical(name, &rules()).map(|route| (route.host, route.forwarded))
    }

    fn ok(host: Option<&str>, forwarded: &str) -> Result<(Option<String>, String), UriError> {
        Ok((host.map(String::from), forwarded.to_string()))
    }

    #[test]
    fn the_host_is_taken_out_and_the_driver_and_path_forwarded() {
        assert_eq!(r("qemu://h1/system"), ok(Some("h1"), "qemu:///system"));
        assert_eq!(
            r("test://H1.example.com./default"),
            ok(Some("h1.example.com"), "test:///default")
        );
        assert_eq!(
            r("QEMU+ssh://root@h2:2222/session"),
            ok(Some("h2"), "qemu:///session")
        );
        assert_eq!(r("xen://[fd00::1]:16514/"), ok(Some("fd00::1"), "xen:///"));
        assert_eq!(r("lxc://h3"), ok(Some("h3"), "lxc:///"));
    }

    #[test]
    fn names_without_a_host_keep_their_driver_and_path() {
        assert_eq!(r("qemu:///system"), ok(None, "qemu:///system"));
        assert_eq!(r("test:///default"), ok(None, "test:///default"));
    }

    #[test]
    fn names_that_would_make_the_hosts_daemon_connect_onwards_or_run_programs_are_refused() {
        for (name, key) in [
            ("qemu+ext://h1/system?command=/bin/sh", "command"),
            ("qemu://h1/system?socket=/run/other.sock", "socket"),
            ("qemu+ssh://h1/system?netcat=nc", "netcat"),
            ("qemu://h1/system?x=1&pkipath=/tmp", "x"),
        ] {
            assert_eq!(
                r(name),
                Err(UriError::ParameterNotAllowed(key.into())),
                "{name}"
            );
        }
        let allowing = UriRules {
            parameters: vec!["mode".into()],
            ..rules()
        };
        let route = canonical("qemu://h1/system?mode=direct", &allowing).unwrap();
        assert_eq!(route.forwarded, "qemu:///system?mode=direct");
    }

    #[test]
    fn only_allowed_drivers_and_the_default_test_driver_pass() {
        assert_eq!(
            r("vbox://h1/session"),
            Err(UriError::DriverNotAllowed("vbox".into()))
        );
        assert!(matches!(
            r("test://h1/etc/shadow"),
            Err(UriError::TestPathNotAllowed { .. })
        ));
        assert!(matches!(
            r("test://h1/"),
            Err(UriError::TestPathNotAllowed { .. })
        ));
        assert_eq!(r(""), Err(UriError::NoDriver(String::new())));
        assert_eq!(r("myalias"), Err(UriError::NoDriver("myalias".into())));
        assert_eq!(r("qemu://h1/system#frag"), Err(UriError::Fragment));
        assert!(matches!(r("q/emu://h1/system"), Err(UriError::NoDriver(_))));
    }
}
