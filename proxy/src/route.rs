//! Where a CONNECT_OPEN goes: `qemu://h1/system?x=y` → host `h1`, forwarded as `qemu:///system?x=y`.

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
    let host_port = authority
        .rsplit_once('@')
        .map(|(_, h)| h)
        .unwrap_or(authority);
    let host = if let Some(v6) = host_port.strip_prefix('[') {
        v6.split_once(']').map(|(h, _)| h).unwrap_or(v6)
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
