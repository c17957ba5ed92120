//! Who may reach which host, and how: rules of `{identity, hosts, mode}`, first match wins,
//! default deny. Identities are certificate subject DNs, matched with globs the way libvirt's
//! `tls_allowed_dn_list` matches them (`*` also matches `,` and `=`), or the names of users who
//! logged in with a password, written `user:NAME` (globs too: `user:ops-*`). A connection
//! authenticated both ways has both identities; a rule's identity says which one it needs.

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

/// Who a connection is: the subject DN of its certificate, or a user who logged in with a
/// password.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Identity {
    Dn(String),
    User(String),
}

/// How rules name users: `user:NAME`.
pub const USER_PREFIX: &str = "user:";

impl Identity {
    /// The identity as rules and log lines write it: the DN, or `user:NAME`.
    pub fn as_rule_text(&self) -> String {
        match self {
            Self::Dn(dn) => dn.clone(),
            Self::User(name) => format!("{USER_PREFIX}{name}"),
        }
    }

    /// A short form for messages the client prints: the DN's CN, or `user:NAME`.
    pub fn short(&self) -> String {
        match self {
            Self::Dn(dn) => crate::tls::cn_of(dn).to_string(),
            Self::User(name) => format!("{USER_PREFIX}{name}"),
        }
    }
}

/// Every identity of a connection, for log lines: `DN`, `user:NAME`, or both joined by ` & `.
pub fn describe(identities: &[Identity]) -> String {
    identities
        .iter()
        .map(Identity::as_rule_text)
        .collect::<Vec<_>>()
        .join(" & ")
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Glob over the client's subject DN, e.g. `O=Example,CN=*`, or `user:` and a glob over
    /// the names of users who logged in with a password, e.g. `user:alice`.
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

/// What a rule's identity matches.
enum Matcher {
    Dn(GlobMatcher),
    User(GlobMatcher),
}

impl Matcher {
    fn new(identity: &str) -> Result<Self, PolicyError> {
        Ok(match identity.strip_prefix(USER_PREFIX) {
            Some(user) => Self::User(glob(user)?),
            None => Self::Dn(glob(identity)?),
        })
    }

    fn matches(&self, identity: &Identity) -> bool {
        match (self, identity) {
            (Self::Dn(g), Identity::Dn(dn)) => g.is_match(dn),
            (Self::User(g), Identity::User(name)) => g.is_match(name),
            _ => false,
        }
    }
}

struct CompiledRule {
    identity: Matcher,
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
            .filter(|identity| !identity.starts_with(USER_PREFIX))
    }

    pub fn new(rules: &[Rule]) -> Result<Self, PolicyError> {
        let rules = rules
            .iter()
            .map(|r| {
                Ok(CompiledRule {
                    identity: Matcher::new(&r.identity)?,
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

    /// The mode of the first rule matching one of the identities and the host; `None` means
    /// denied.
    pub fn decide_for(&self, identities: &[Identity], host: &str) -> Option<Mode> {
        let host = host.to_ascii_lowercase();
        self.rules
            .iter()
            .find(|r| {
                identities.iter().any(|i| r.identity.matches(i))
                    && r.hosts.iter().any(|h| h.is_match(&host))
            })
            .map(|r| r.mode)
    }

    /// [`Policy::decide_for`] a certificate's subject DN alone.
    pub fn decide(&self, dn: &str, host: &str) -> Option<Mode> {
        self.decide_for(&[Identity::Dn(dn.to_string())], host)
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
    fn user_rules_match_password_logins_and_dn_rules_certificates_never_each_other() {
        let policy = Policy::new(&[
            rule("user:alice", &["h1"], Mode::Rw),
            rule("user:ops-*", &["*"], Mode::Ro),
            rule("CN=alice", &["h2"], Mode::Rw),
        ])
        .unwrap();
        let alice = Identity::User("alice".into());
        let cert = Identity::Dn("CN=alice".into());
        assert_eq!(
            policy.decide_for(std::slice::from_ref(&alice), "h1"),
            Some(Mode::Rw)
        );
        assert_eq!(policy.decide_for(std::slice::from_ref(&alice), "h2"), None);
        assert_eq!(policy.decide_for(std::slice::from_ref(&cert), "h1"), None);
        assert_eq!(
            policy.decide_for(std::slice::from_ref(&cert), "h2"),
            Some(Mode::Rw)
        );
        // Both identities: the first rule either of them matches.
        assert_eq!(policy.decide_for(&[cert, alice], "h2"), Some(Mode::Rw));
        let ops = Identity::User("ops-bob".into());
        assert_eq!(policy.decide_for(&[ops], "db1"), Some(Mode::Ro));
        // A DN that reads like a user rule is still a DN.
        let lookalike = Identity::Dn("user:alice".into());
        assert_eq!(policy.decide_for(&[lookalike], "h1"), None);
        assert_eq!(
            describe(&[Identity::Dn("CN=a".into()), Identity::User("a".into())]),
            "CN=a & user:a"
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
