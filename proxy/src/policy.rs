//! Who may reach which host, and how: rules of `{identity, hosts, mode}`, first match wins,
//! default deny. Identities are certificate subject DNs, matched with globs the way libvirt's
//! `tls_allowed_dn_list` matches them (`*` also matches `,` and `=`).

use globset::{Glob, GlobMatcher};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Read-write.
    Rw,
    /// Read-only: the forwarded CONNECT_OPEN carries the read-only flag; libvirtd enforces it.
    Ro,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rw => "rw",
            Self::Ro => "ro",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Glob over the client's subject DN, e.g. `O=Example,CN=*` or `*CN=alice`.
    pub identity: String,
    /// Globs over host names.
    pub hosts: Vec<String>,
    pub mode: Mode,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid glob {glob:?} in proxy.rules: {source}")]
pub struct PolicyError {
    glob: String,
    source: globset::Error,
}

pub(crate) fn glob(pattern: &str) -> Result<GlobMatcher, PolicyError> {
    Glob::new(pattern)
        .map(|g| g.compile_matcher())
        .map_err(|source| PolicyError {
            glob: pattern.to_string(),
            source,
        })
}

struct CompiledRule {
    identity: GlobMatcher,
    hosts: Vec<GlobMatcher>,
    mode: Mode,
}

/// The compiled rule list.
pub struct Policy {
    rules: Vec<CompiledRule>,
}

impl Policy {
    /// Rules whose identity glob starts with `*` match the end of any subject, under any
    /// organisation of any accepted CA: worth a word to the operator.
    pub fn unanchored(rules: &[Rule]) -> impl Iterator<Item = &str> {
        rules
            .iter()
            .map(|r| r.identity.as_str())
            .filter(|identity| identity.starts_with('*') && *identity != "*")
    }

    pub fn new(rules: &[Rule]) -> Result<Self, PolicyError> {
        let rules = rules
            .iter()
            .map(|r| {
                Ok(CompiledRule {
                    identity: glob(&r.identity)?,
                    hosts: r
                        .hosts
                        .iter()
                        .map(|h| glob(&h.to_ascii_lowercase()))
                        .collect::<Result<_, _>>()?,
                    mode: r.mode,
                })
            })
            .collect::<Result<_, PolicyError>>()?;
        Ok(Self { rules })
    }

    /// The mode of the first rule matching both identity and host; `None` means denied.
    pub fn decide(&self, identity: &str, host: &str) -> Option<Mode> {
        let host = host.to_ascii_lowercase();
        self.rules
            .iter()
            .find(|r| r.identity.is_match(identity) && r.hosts.iter().any(|h| h.is_match(&host)))
            .map(|r| r.mode)
    }
}

/// An allow-list of DN globs (libvirt's `tls_allowed_dn_list`); empty allows every DN.
pub struct DnAllowList {
    globs: Vec<GlobMatcher>,
}

impl DnAllowList {
    pub fn new(patterns: &[String]) -> Result<Self, PolicyError> {
        Ok(Self {
            globs: patterns.iter().map(|p| glob(p)).collect::<Result<_, _>>()?,
        })
    }

    pub fn allows(&self, dn: &str) -> bool {
        self.globs.is_empty() || self.globs.iter().any(|g| g.is_match(dn))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(identity: &str, hosts: &[&str], mode: Mode) -> Rule {
        Rule {
            identity: identity.into(),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            mode,
        }
    }

    #[test]
    fn first_matching_rule_wins_and_the_default_is_deny() {
        let policy = Policy::new(&[
            rule("*CN=alice", &["h2"], Mode::Ro),
            rule("*CN=alice", &["h*"], Mode::Rw),
            rule("O=Ops,*", &["*"], Mode::Rw),
        ])
        .unwrap();
        assert_eq!(policy.decide("O=Dev,CN=alice", "h2"), Some(Mode::Ro));
        assert_eq!(policy.decide("O=Dev,CN=alice", "H1"), Some(Mode::Rw));
        assert_eq!(policy.decide("O=Dev,CN=alice", "db1"), None);
        assert_eq!(policy.decide("O=Ops,CN=bob", "db1"), Some(Mode::Rw));
        assert_eq!(policy.decide("O=Dev,CN=bob", "h1"), None);
    }

    #[test]
    fn a_rule_matches_the_whole_subject_never_a_part_of_it() {
        let policy = Policy::new(&[rule("CN=alice", &["*"], Mode::Rw)]).unwrap();
        assert_eq!(policy.decide("CN=alice", "h1"), Some(Mode::Rw));
        assert_eq!(policy.decide("CN=xCN=alice", "h1"), None);
        assert_eq!(policy.decide("O=Evil,CN=alice", "h1"), None);
        let prefix = Policy::new(&[rule("C=GB,O=Example,CN=*", &["*"], Mode::Rw)]).unwrap();
        assert_eq!(prefix.decide("O=Evil,C=GB,O=Example,CN=x", "h1"), None);
        let suffix = [rule("*CN=alice", &["*"], Mode::Rw)];
        assert_eq!(
            Policy::unanchored(&suffix).collect::<Vec<_>>(),
            vec!["*CN=alice"]
        );
    }

    #[test]
    fn dn_globs_follow_tls_allowed_dn_list_semantics() {
        let allow = DnAllowList::new(&["C=GB,O=virtgate-test,CN=*".into()]).unwrap();
        assert!(allow.allows("C=GB,O=virtgate-test,CN=alice"));
        assert!(!allow.allows("C=US,O=virtgate-test,CN=alice"));
        assert!(DnAllowList::new(&[]).unwrap().allows("anything"));
    }
}
