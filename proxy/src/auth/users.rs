//! The users who may log in at the front door with a password, as the gateway holds them: per
//! user, one RFC 5802 verifier per mechanism (salt, iterations, StoredKey, ServerKey) and never a
//! password.
//!
//! A verifier is written as one line of text, the layout PostgreSQL uses for its SCRAM secrets:
//! `SCRAM-SHA-256$<iterations>:<base64 salt>$<base64 StoredKey>:<base64 ServerKey>`. The broker
//! keeps these strings (`virtgate users add` makes them from the password at the operator's
//! terminal, so the password never leaves it) and hands them to every gateway.
//!
//! An unknown user is answered with a **fake verifier** made from the name and a secret key the
//! same way every time (salt and keys are HMACs of the name), with the real users' iteration
//! count: a client cannot tell an unknown name from a wrong password by the salt, the count, the
//! step that fails, the error, or the time it takes.

use std::collections::HashMap;
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use tokio::sync::watch;

use super::scram::{Mechanism, ScramError, Verifier};

/// PBKDF2 iterations of the verifiers `virtgate users add` makes (RFC 7677's minimum; what
/// cyrus-sasl uses). The client pays them on every login; the gateway never does.
pub const ITERATIONS: u32 = 4096;
/// Bytes of salt in new verifiers.
pub const SALT_LEN: usize = 16;
/// Longest user name.
pub const MAX_NAME: usize = 64;

/// Whether `name` can name a user: 1 to 64 of `A-Z a-z 0-9 . _ - @`, not starting with `-`.
/// Names travel in SCRAM messages, logs and `user:NAME` policy rules; nothing needs escaping.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@'))
}

/// Why a verifier string cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a SCRAM verifier ({0}); expected SCRAM-SHA-256$ITERATIONS:SALT$STOREDKEY:SERVERKEY as `virtgate users add` writes it")]
pub struct VerifierFormatError(&'static str);

impl Verifier {
    /// Writes `SCRAM-SHA-256$4096:salt$StoredKey:ServerKey`.
    pub fn to_text(&self) -> String {
        format!(
            "{}${}:{}${}:{}",
            self.mechanism.name(),
            self.iterations,
            B64.encode(&self.salt),
            B64.encode(&self.stored_key),
            B64.encode(&self.server_key)
        )
    }

    /// Reads what [`Verifier::to_text`] writes.
    pub fn parse(text: &str) -> Result<Self, VerifierFormatError> {
        let mut parts = text.trim().split('$');
        let (Some(mechanism), Some(params), Some(keys), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(VerifierFormatError("three $-separated parts"));
        };
        let mechanism =
            Mechanism::from_name(mechanism).ok_or(VerifierFormatError("unknown mechanism"))?;
        let (iterations, salt) = params
            .split_once(':')
            .ok_or(VerifierFormatError("ITERATIONS:SALT"))?;
        let (stored, server) = keys
            .split_once(':')
            .ok_or(VerifierFormatError("STOREDKEY:SERVERKEY"))?;
        let decode = |s: &str| B64.decode(s).map_err(|_| VerifierFormatError("base64"));
        let verifier = Verifier {
            mechanism,
            iterations: iterations
                .parse()
                .map_err(|_| VerifierFormatError("iterations"))?,
            salt: decode(salt)?,
            stored_key: decode(stored)?,
            server_key: decode(server)?,
        };
        if !verifier.is_well_formed() || verifier.salt.len() > 256 {
            return Err(VerifierFormatError("key sizes"));
        }
        Ok(verifier)
    }
}

/// One verifier per mechanism for `password`, each with its own random salt.
pub fn verifiers_for(password: &str) -> Result<Vec<Verifier>, ScramError> {
    Mechanism::ALL
        .into_iter()
        .map(|m| {
            let mut salt = [0u8; SALT_LEN];
            getrandom::fill(&mut salt).expect("the operating system's random source works");
            Verifier::from_password(m, password, &salt, ITERATIONS)
        })
        .collect()
}

/// Every user the gateway knows, and the key of its fake verifiers.
#[derive(Clone, Default)]
pub struct Users {
    users: HashMap<String, Vec<Verifier>>,
    /// Secret of the fake verifiers; the same on every gateway following one broker, so they
    /// all answer an unknown name alike.
    fake_key: Vec<u8>,
}

impl std::fmt::Debug for Users {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Users")
            .field("users", &self.users.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// A user's verifier for one login, real or fake.
#[derive(Debug)]
pub struct Lookup {
    pub verifier: Verifier,
    /// Whether the user exists with a verifier for the mechanism; for the log only.
    pub known: bool,
}

impl Users {
    /// The table of `users` (name and verifiers), with `fake_key` for unknown names. Without a
    /// key a random one is made (answers to unknown names then differ between gateways and
    /// restarts; the broker hands every gateway the same key).
    pub fn new(users: impl IntoIterator<Item = (String, Vec<Verifier>)>, fake_key: &[u8]) -> Self {
        let fake_key = if fake_key.is_empty() {
            let mut key = vec![0u8; 32];
            getrandom::fill(&mut key).expect("the operating system's random source works");
            key
        } else {
            fake_key.to_vec()
        };
        Self {
            users: users.into_iter().collect(),
            fake_key,
        }
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.users.contains_key(name)
    }

    /// The verifier for `name` and `mechanism`. The fake one is always made first, so a known
    /// and an unknown name cost the same.
    pub fn lookup(&self, name: &str, mechanism: Mechanism) -> Lookup {
        let fake = self.fake(name, mechanism);
        let real = self
            .users
            .get(name)
            .and_then(|vs| vs.iter().find(|v| v.mechanism == mechanism));
        match real {
            Some(v) => Lookup {
                verifier: v.clone(),
                known: true,
            },
            None => Lookup {
                verifier: fake,
                known: false,
            },
        }
    }

    /// A verifier nobody can log in with, the same for the same name every time.
    fn fake(&self, name: &str, m: Mechanism) -> Verifier {
        let derive = |label: &[u8], len: usize| {
            let mut out = m.hmac(
                &self.fake_key,
                &[label, m.name().as_bytes(), b"\0", name.as_bytes()],
            );
            out.truncate(len);
            out
        };
        Verifier {
            mechanism: m,
            iterations: ITERATIONS,
            salt: derive(b"salt\0", SALT_LEN),
            stored_key: derive(b"stored\0", m.hash_len()),
            server_key: derive(b"server\0", m.hash_len()),
        }
    }
}

/// The current users; a new table is published whenever they change.
pub type UsersWatch = watch::Receiver<Arc<Users>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_verifier_reads_back_from_its_text_and_holds_no_password() {
        for verifier in verifiers_for("correct horse").unwrap() {
            let text = verifier.to_text();
            assert!(text.starts_with(verifier.mechanism.name()));
            assert!(!text.contains("correct horse"));
            assert_eq!(Verifier::parse(&text).unwrap(), verifier);
        }
        for bad in [
            "",
            "SCRAM-SHA-256",
            "SCRAM-SHA-1$4096:c2FsdA==$AAAA:AAAA",
            "SCRAM-SHA-256$x:c2FsdA==$AAAA:AAAA",
            "SCRAM-SHA-256$4096:c2FsdA==$AAAA:AAAA",
            "SCRAM-SHA-256$4096:$$",
        ] {
            assert!(Verifier::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn an_unknown_name_gets_the_same_fake_verifier_every_time_with_the_real_iteration_count() {
        let alice = verifiers_for("pw").unwrap();
        let users = Users::new([("alice".to_string(), alice.clone())], b"key");
        let real = users.lookup("alice", Mechanism::Sha512);
        assert!(real.known);
        assert_eq!(real.verifier, alice[1]);

        let first = users.lookup("mallory", Mechanism::Sha256);
        let again = Users::new([], b"key").lookup("mallory", Mechanism::Sha256);
        assert!(!first.known);
        assert_eq!(
            first.verifier, again.verifier,
            "deterministic per name and key"
        );
        assert_eq!(first.verifier.iterations, real.verifier.iterations);
        assert_eq!(first.verifier.salt.len(), real.verifier.salt.len());
        assert!(first.verifier.is_well_formed());
        let other = users.lookup("trudy", Mechanism::Sha256);
        assert_ne!(first.verifier.salt, other.verifier.salt);
        let other_key = Users::new([], b"another key").lookup("mallory", Mechanism::Sha256);
        assert_ne!(first.verifier.salt, other_key.verifier.salt);
    }

    #[test]
    fn user_names_are_plain_enough_for_scram_logs_and_rules() {
        for good in ["alice", "ops.bob", "svc-nova_1", "carol@example.org"] {
            assert!(is_valid_name(good), "{good}");
        }
        for bad in [
            "",
            "-rf",
            "a,b",
            "a=b",
            "a b",
            "ålice",
            "x*",
            &"a".repeat(65),
        ] {
            assert!(!is_valid_name(bad), "{bad}");
        }
    }
}
