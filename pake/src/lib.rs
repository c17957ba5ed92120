//! The check a host agent and the gateway run on every connection, after TLS and before
//! anything else: OPAQUE (RFC 9807, opaque-ke) with its context bound to the TLS 1.3 session by
//! the RFC 9266 exporter, so a party that terminates TLS in the middle and forwards these
//! messages between two sessions makes the check fail.
//!
//! Owns: the cipher suite, the messages and their framing ([`wire`], fuzzed), the pure
//! client and server halves of login and registration ([`opaque`]), the channel binding
//! ([`Binding`]), the per-host secret and enrollment token types (never printed by `Debug`),
//! and an async driver over any `AsyncRead + AsyncWrite` ([`driver`]) that the gateway, the
//! broker and the agent share.
//! Must not: open sockets or files, decide which keys or hosts are trusted (its callers pin TLS
//! keys before they run it), use a slow hash (the secrets are random, ≥ 128 bits), run over
//! anything but TLS 1.3, or put a secret into an error, a `Debug` string or a log line.
#![forbid(unsafe_code)]

pub mod driver;
pub mod opaque;
pub mod wire;

use std::fmt;

use zeroize::Zeroizing;

pub use opaque::{Record, ServerKeys};
pub use wire::{Hello, Purpose, Settings};

/// RFC 9266 `tls-exporter`: label, empty context, 32 bytes.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-Channel-Binding";

/// Everything that can go wrong in the check. Messages say what it means for an operator.
#[derive(Debug, thiserror::Error)]
pub enum PakeError {
    /// The other side's proof did not verify: it holds another secret, or the two sides are not
    /// on the same TLS session (a relay terminating TLS in between).
    #[error("the proof did not verify: the other side holds another secret, or it is not on this TLS session (something terminates TLS in between)")]
    ProofFailed,
    /// The other side refused, and said why.
    #[error("{0}")]
    Refused(String),
    /// The other side sent something that is not the next message of the exchange.
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("the connection is not TLS 1.3; the check is bound to a TLS 1.3 session only")]
    NotTls13,
    #[error("the connection closed during the check")]
    Closed,
    #[error("I/O during the check: {0}")]
    Io(#[from] std::io::Error),
}

/// The value both ends of one TLS 1.3 session, and only they, share: the RFC 9266 exporter.
#[derive(Clone, PartialEq, Eq)]
pub struct Binding([u8; 32]);

impl Binding {
    /// The exporter of a TLS 1.3 connection whose handshake is complete.
    pub fn of<D>(conn: &rustls::ConnectionCommon<D>) -> Result<Binding, PakeError> {
        if conn.protocol_version() != Some(rustls::ProtocolVersion::TLSv1_3) {
            return Err(PakeError::NotTls13);
        }
        conn.export_keying_material([0u8; 32], EXPORTER_LABEL, Some(b""))
            .map(Binding)
            .map_err(|e| PakeError::Protocol(format!("TLS exporter: {e}")))
    }

    /// A fixed value, for tests that show what the exporter is for.
    pub fn from_bytes(bytes: [u8; 32]) -> Binding {
        Binding(bytes)
    }
}

impl fmt::Debug for Binding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Binding(..)")
    }
}

/// The OPAQUE context of one exchange: what it is for, and the TLS session it runs on.
pub(crate) fn context(purpose: Purpose, binding: &Binding) -> Vec<u8> {
    let mut c = b"virtgate pake v1 ".to_vec();
    c.extend_from_slice(purpose.as_str().as_bytes());
    c.push(0);
    c.extend_from_slice(&binding.0);
    c
}

/// A random secret of 32 bytes: the per-host secret the gateway proves on every connection.
/// Written as 64 hex digits; never shown by `Debug`; wiped when dropped.
#[derive(Clone)]
pub struct Secret(Zeroizing<Vec<u8>>);

impl Secret {
    /// 32 bytes from the operating system's generator.
    pub fn generate() -> Secret {
        use rand::RngCore;
        let mut bytes = Zeroizing::new(vec![0u8; 32]);
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        Secret(bytes)
    }

    pub fn from_bytes(bytes: &[u8]) -> Secret {
        Secret(Zeroizing::new(bytes.to_vec()))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// 64 hex digits (the form stored in secret files).
    pub fn to_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(self.0.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// Reads hex digits; `None` for anything else or fewer than 16 bytes.
    pub fn from_hex(text: &str) -> Option<Secret> {
        let bytes = decode_hex(text.trim())?;
        (bytes.len() >= 16).then(|| Secret(Zeroizing::new(bytes)))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

/// One host's secret as the gateway keeps it: a file per host, named after it, in the
/// gateway's secret directory, holding `v1 GENERATION HEX` on one line (0600).
#[derive(Clone, Debug)]
pub struct HostSecret {
    pub generation: u32,
    pub secret: Secret,
}

impl HostSecret {
    /// The file's text.
    pub fn to_file_text(&self) -> Zeroizing<String> {
        Zeroizing::new(format!(
            "v1 {} {}\n",
            self.generation,
            self.secret.to_hex().as_str()
        ))
    }

    /// Reads a file's text; `None` if it is not one.
    pub fn parse(text: &str) -> Option<HostSecret> {
        let mut words = text.split_whitespace();
        if words.next()? != "v1" {
            return None;
        }
        let generation = words.next()?.parse().ok().filter(|g| *g > 0)?;
        let secret = Secret::from_hex(words.next()?)?;
        words
            .next()
            .is_none()
            .then_some(HostSecret { generation, secret })
    }

    /// Whether `host` can name a secret file: a host name of letters, digits, `-`, `.` and
    /// `_`, not starting with a dot.
    pub fn is_file_name(host: &str) -> bool {
        !host.is_empty()
            && host.len() <= 253
            && !host.starts_with('.')
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
    }
}

/// An enrollment token, `<id>.<secret>`: the id is public (listings, logs, the agent's mDNS
/// TXT while it waits), the secret is 128 random bits, shown once and never logged.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    pub id: String,
    secret: Zeroizing<String>,
}

/// Hex digits of a token id (32 bits: enough to tell the few open tokens apart).
pub const TOKEN_ID_LEN: usize = 8;
/// Hex digits of a token secret (128 bits).
pub const TOKEN_SECRET_LEN: usize = 32;

impl Token {
    /// A fresh token from the operating system's generator.
    pub fn generate() -> Token {
        use rand::RngCore;
        let mut bytes = Zeroizing::new([0u8; 20]);
        rand::rngs::OsRng.fill_bytes(&mut bytes[..]);
        let hex: Zeroizing<String> =
            Zeroizing::new(bytes.iter().map(|b| format!("{b:02x}")).collect());
        Token {
            id: hex[..TOKEN_ID_LEN].to_string(),
            secret: Zeroizing::new(hex[TOKEN_ID_LEN..].to_string()),
        }
    }

    /// The secret part, as the bytes the PAKE proves.
    pub fn secret_bytes(&self) -> &[u8] {
        self.secret.as_bytes()
    }

    /// `<id>.<secret>`: for printing once, to the operator who asked for it.
    pub fn reveal(&self) -> Zeroizing<String> {
        Zeroizing::new(format!("{}.{}", self.id, self.secret.as_str()))
    }

    /// Whether `id` looks like a token id (lower-case hex of the right length).
    pub fn is_id(id: &str) -> bool {
        id.len() == TOKEN_ID_LEN
            && id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    }
}

impl std::str::FromStr for Token {
    type Err = String;

    fn from_str(text: &str) -> Result<Token, String> {
        let text = text.trim();
        let bad = || {
            "an enrollment token is <id>.<secret>: 8 and 32 lower-case hex digits, as `virtgate enroll HOST` prints it; copy it again".to_string()
        };
        let (id, secret) = text.split_once('.').ok_or_else(bad)?;
        let hexdigits = |s: &str| {
            s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        if !Token::is_id(id) || secret.len() != TOKEN_SECRET_LEN || !hexdigits(secret) {
            return Err(bad());
        }
        Ok(Token {
            id: id.to_string(),
            secret: Zeroizing::new(secret.to_string()),
        })
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token({}.<redacted>)", self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_print_their_secret_only_when_revealed() {
        let token = Token::generate();
        let shown = token.reveal();
        let secret = shown.split_once('.').unwrap().1.to_string();
        assert_eq!(secret.len(), TOKEN_SECRET_LEN);
        assert!(!format!("{token:?}").contains(&secret));
        assert_eq!(shown.parse::<Token>().unwrap(), token);
        for bad in [
            "",
            "abc",
            "0123456.0123",
            "ABCDEF01.0123456789abcdef0123456789abcdef",
        ] {
            assert!(bad.parse::<Token>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn host_secret_files_read_back_and_odd_names_are_not_files() {
        let s = HostSecret {
            generation: 3,
            secret: Secret::generate(),
        };
        let back = HostSecret::parse(&s.to_file_text()).unwrap();
        assert_eq!(
            (back.generation, back.secret.as_bytes()),
            (3, s.secret.as_bytes())
        );
        for bad in [
            "",
            "v2 1 00",
            "v1 0 0011223344556677889900aabbccddeeff",
            "v1 x y",
            "v1 1 zz",
        ] {
            assert!(HostSecret::parse(bad).is_none(), "{bad:?}");
        }
        assert!(HostSecret::is_file_name("h1.example.com"));
        for bad in ["", "..", ".hidden", "a/b", "h 1"] {
            assert!(!HostSecret::is_file_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn secrets_round_trip_as_hex_and_never_show_in_debug() {
        let s = Secret::generate();
        let hex = s.to_hex();
        assert_eq!(hex.len(), 64);
        assert_eq!(Secret::from_hex(&hex).unwrap().as_bytes(), s.as_bytes());
        assert!(!format!("{s:?}").contains(hex.as_str()));
        assert!(Secret::from_hex("zz").is_none());
        assert!(
            Secret::from_hex("00ff").is_none(),
            "too short to be a secret"
        );
    }
}
