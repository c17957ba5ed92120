//! SCRAM (RFC 5802; SHA-256 and SHA-512 as RFC 7677 and its SHA-512 sibling name them), both
//! roles, as pure functions over the messages: the gateway is the **server** for clients that
//! log in with a password at the front door, and the **client** of hosts whose libvirtd demands
//! `auth_tls = "sasl"`.
//!
//! The message handling is composed here on RustCrypto's `hmac`, `sha2` and `pbkdf2` (no
//! primitive is written here), `subtle` for every comparison of secret-derived bytes, and
//! `stringprep`'s SASLprep for passwords. Why not rsasl 2.3.1 (measured in
//! `secondary-checks.md` §3.3): its server compares the recomputed StoredKey with `==` and its
//! client the server signature likewise (not constant time), it applies no SASLprep to
//! passwords, its client accepts any iteration count a server sends (`i=4294967295` would hold
//! a gateway thread for hours), and an unknown user gets a random salt and `i=16384`, which
//! tells it apart. The exchange is three messages; the RFC 7677 vectors and real virsh,
//! python3-libvirt and libvirtd (cyrus-sasl) check it (unit tests here, `tests/sasl_*.rs`).
//!
//! Only `n` and `y` channel-binding flags are accepted: libvirt offers no `-PLUS` mechanism
//! (`secondary-checks.md` §3.1), so a SCRAM login through libvirt cannot be bound to its TLS
//! session; TLS protects it on both legs.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256, Sha512};
use subtle::ConstantTimeEq;

/// Longest SCRAM message either side accepts. Real ones are under 300 bytes.
pub const MAX_MESSAGE: usize = 2048;
/// Longest user name (after SCRAM's `=2C` / `=3D` unescaping).
pub const MAX_USER: usize = 255;
/// Most PBKDF2 iterations the gateway computes for a host (cyrus-sasl uses 4096). More is
/// refused: a host cannot make the gateway spend seconds per login.
pub const MAX_CLIENT_ITERATIONS: u32 = 1_000_000;
/// Bytes of randomness in a nonce the gateway makes (base64: 24 printable characters).
const NONCE_BYTES: usize = 18;

/// A SCRAM mechanism the gateway speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mechanism {
    Sha256,
    Sha512,
}

impl Mechanism {
    /// Both, in the gateway's order of preference as a client (SHA-256 first, as Kolla and
    /// libvirt's docs configure hosts).
    pub const ALL: [Mechanism; 2] = [Self::Sha256, Self::Sha512];

    /// The IANA SASL name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sha256 => "SCRAM-SHA-256",
            Self::Sha512 => "SCRAM-SHA-512",
        }
    }

    /// Parses an IANA name (exact, upper case, as SASL names are).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name() == name)
    }

    /// Bytes of the hash (and of every key and signature).
    pub fn hash_len(self) -> usize {
        match self {
            Self::Sha256 => 32,
            Self::Sha512 => 64,
        }
    }

    /// HMAC(key, concatenation of `parts`).
    pub(crate) fn hmac(self, key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
        fn run<M: Mac + hmac::digest::KeyInit>(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
            let mut mac = <M as hmac::digest::KeyInit>::new_from_slice(key)
                .expect("HMAC takes keys of any length");
            for part in parts {
                mac.update(part);
            }
            mac.finalize().into_bytes().to_vec()
        }
        match self {
            Self::Sha256 => run::<Hmac<Sha256>>(key, parts),
            Self::Sha512 => run::<Hmac<Sha512>>(key, parts),
        }
    }

    fn hash(self, data: &[u8]) -> Vec<u8> {
        match self {
            Self::Sha256 => Sha256::digest(data).to_vec(),
            Self::Sha512 => Sha512::digest(data).to_vec(),
        }
    }

    /// `Hi(password, salt, i)`: PBKDF2 with HMAC of this hash, one block.
    fn hi(self, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
        let mut out = vec![0u8; self.hash_len()];
        match self {
            Self::Sha256 => pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut out),
            Self::Sha512 => pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, iterations, &mut out),
        }
        out
    }

    /// `SaltedPassword := Hi(Normalize(password), salt, i)`, Normalize being SASLprep.
    pub fn salted_password(
        self,
        password: &str,
        salt: &[u8],
        iterations: u32,
    ) -> Result<Vec<u8>, ScramError> {
        let prepared = stringprep::saslprep(password).map_err(|_| ScramError::BadPassword)?;
        Ok(self.hi(prepared.as_bytes(), salt, iterations))
    }
}

/// Why a SCRAM exchange failed. On the wire every failure at the front door is one and the same
/// error; these tell the log and the metrics why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    #[error("SCRAM message longer than {MAX_MESSAGE} bytes")]
    TooLong,
    #[error("the client asked for channel binding, which libvirt's SASL cannot carry")]
    ChannelBinding,
    #[error(
        "the client asked to act for another user (authzid), which the gateway does not allow"
    )]
    Authzid,
    #[error("the client sent a mandatory SCRAM extension the gateway does not know")]
    Extension,
    #[error(
        "the nonce or channel-binding data of the final message does not continue the exchange"
    )]
    Continuity,
    #[error("wrong proof: the password does not match")]
    WrongProof,
    #[error("the server's signature does not verify: it does not know this password (or it is not the host it claims to be)")]
    BadServerSignature,
    #[error("the server refused the login: {0}")]
    ServerRefused(String),
    #[error("the server asks for {got} PBKDF2 iterations; the gateway computes at most {max}")]
    Iterations { got: u32, max: u32 },
    #[error("the stored SaltedPassword was made for another salt, iteration count or mechanism than the host uses now (its user was created again?); set the credentials again with `virtgate hosts credentials`")]
    StaleSalted,
    #[error(
        "the password cannot be prepared with SASLprep (RFC 4013): it holds prohibited characters"
    )]
    BadPassword,
}

/// A server's verifier for one user and one mechanism (RFC 5802 §5): all it stores.
#[derive(Clone, PartialEq, Eq)]
pub struct Verifier {
    pub mechanism: Mechanism,
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("mechanism", &self.mechanism)
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// The keys derived from a SaltedPassword.
    pub fn from_salted(
        mechanism: Mechanism,
        salted_password: &[u8],
        salt: &[u8],
        iterations: u32,
    ) -> Self {
        let client_key = mechanism.hmac(salted_password, &[b"Client Key"]);
        Self {
            mechanism,
            iterations,
            salt: salt.to_vec(),
            stored_key: mechanism.hash(&client_key),
            server_key: mechanism.hmac(salted_password, &[b"Server Key"]),
        }
    }

    /// The verifier of `password` with `salt` and `iterations`.
    pub fn from_password(
        mechanism: Mechanism,
        password: &str,
        salt: &[u8],
        iterations: u32,
    ) -> Result<Self, ScramError> {
        let salted = mechanism.salted_password(password, salt, iterations)?;
        Ok(Self::from_salted(mechanism, &salted, salt, iterations))
    }

    /// Whether the keys have the sizes the mechanism gives them.
    pub fn is_well_formed(&self) -> bool {
        let n = self.mechanism.hash_len();
        self.iterations > 0
            && !self.salt.is_empty()
            && self.stored_key.len() == n
            && self.server_key.len() == n
    }
}

/// A fresh nonce: random, printable, without `,`.
pub fn nonce() -> String {
    let mut raw = [0u8; NONCE_BYTES];
    getrandom::fill(&mut raw).expect("the operating system's random source works");
    B64.encode(raw)
}

/// `saslname`: `=` and `,` are written `=3D` and `=2C`.
fn escape_name(name: &str) -> String {
    name.replace('=', "=3D").replace(',', "=2C")
}

fn unescape_name(name: &str) -> Result<String, ScramError> {
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(at) = rest.find('=') {
        out.push_str(&rest[..at]);
        let code = rest.get(at..at + 3);
        match code {
            Some("=2C") => out.push(','),
            Some("=3D") => out.push('='),
            _ => return Err(ScramError::Malformed("a user name with a stray '='")),
        }
        rest = &rest[at + 3..];
    }
    out.push_str(rest);
    Ok(out)
}

fn text(message: &[u8]) -> Result<&str, ScramError> {
    if message.len() > MAX_MESSAGE {
        return Err(ScramError::TooLong);
    }
    std::str::from_utf8(message).map_err(|_| ScramError::Malformed("not UTF-8"))
}

/// `printable` of RFC 5802: `%x21-2B / %x2D-7E` (no `,`).
fn is_printable(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

/// The value of attribute `key` (`k=value`), or `what` as the error.
fn attribute<'a>(
    part: Option<&'a str>,
    key: char,
    what: &'static str,
) -> Result<&'a str, ScramError> {
    part.and_then(|p| p.strip_prefix(key))
        .and_then(|p| p.strip_prefix('='))
        .ok_or(ScramError::Malformed(what))
}

/// The client's first message, as the server reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientFirst {
    /// `n,,` or `y,,`: repeated, base64, in the final message.
    pub gs2_header: String,
    /// The user name, unescaped.
    pub user: String,
    pub nonce: String,
    /// `client-first-message-bare`, part of the AuthMessage.
    pub bare: String,
}

impl ClientFirst {
    /// Parses `gs2-header client-first-message-bare`.
    pub fn parse(message: &[u8]) -> Result<Self, ScramError> {
        let message = text(message)?;
        let mut parts = message.splitn(3, ',');
        let flag = parts.next().unwrap_or_default();
        match flag {
            "n" | "y" => {}
            f if f.starts_with("p=") => return Err(ScramError::ChannelBinding),
            _ => return Err(ScramError::Malformed("no channel-binding flag")),
        }
        let authzid = parts.next().ok_or(ScramError::Malformed("no GS2 header"))?;
        let bare = parts.next().ok_or(ScramError::Malformed("no user name"))?;
        let gs2_header = format!("{flag},{authzid},");
        let mut fields = bare.split(',');
        let first = fields.next();
        if first.is_some_and(|f| f.starts_with("m=")) {
            return Err(ScramError::Extension);
        }
        let user = unescape_name(attribute(first, 'n', "no n= user name")?)?;
        if user.is_empty() || user.len() > MAX_USER {
            return Err(ScramError::Malformed("user name empty or too long"));
        }
        if !authzid.is_empty() {
            let wanted = unescape_name(attribute(Some(authzid), 'a', "bad authzid")?)?;
            if wanted != user {
                return Err(ScramError::Authzid);
            }
        }
        let nonce = attribute(fields.next(), 'r', "no r= nonce")?;
        if !is_printable(nonce) {
            return Err(ScramError::Malformed("a nonce with unprintable characters"));
        }
        Ok(Self {
            gs2_header,
            user,
            nonce: nonce.to_string(),
            bare: bare.to_string(),
        })
    }
}

/// The server's side after its first message: waiting for the client's proof.
pub struct ServerExchange {
    verifier: Verifier,
    gs2_header: String,
    nonce: String,
    /// `client-first-message-bare "," server-first-message`.
    auth_prefix: String,
}

impl std::fmt::Debug for ServerExchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerExchange").finish_non_exhaustive()
    }
}

impl ServerExchange {
    /// Answers `first` with `verifier` (a real one, or for an unknown user a fake one made the
    /// same way every time: the answer looks the same). Returns the server-first message.
    pub fn start(first: &ClientFirst, verifier: Verifier, server_nonce: &str) -> (Self, Vec<u8>) {
        let nonce = format!("{}{server_nonce}", first.nonce);
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&verifier.salt),
            verifier.iterations
        );
        let exchange = Self {
            gs2_header: first.gs2_header.clone(),
            nonce,
            auth_prefix: format!("{},{server_first}", first.bare),
            verifier,
        };
        (exchange, server_first.into_bytes())
    }

    /// Checks the client's final message; on success returns the server-final message
    /// (`v=signature`). The proof is checked in constant time.
    pub fn finish(self, client_final: &[u8]) -> Result<Vec<u8>, ScramError> {
        let message = text(client_final)?;
        let (without_proof, proof) = message
            .rsplit_once(",p=")
            .ok_or(ScramError::Malformed("no p= proof"))?;
        let mut fields = without_proof.split(',');
        let binding = attribute(fields.next(), 'c', "no c= channel binding")?;
        let nonce = attribute(fields.next(), 'r', "no r= nonce")?;
        if binding != B64.encode(&self.gs2_header) || nonce != self.nonce {
            return Err(ScramError::Continuity);
        }
        let m = self.verifier.mechanism;
        let proof = B64
            .decode(proof)
            .map_err(|_| ScramError::Malformed("the proof is not base64"))?;
        if proof.len() != m.hash_len() {
            return Err(ScramError::Malformed("the proof has the wrong length"));
        }
        let auth = [self.auth_prefix.as_bytes(), b",", without_proof.as_bytes()];
        let client_signature = m.hmac(&self.verifier.stored_key, &auth);
        let client_key: Vec<u8> = proof
            .iter()
            .zip(&client_signature)
            .map(|(p, s)| p ^ s)
            .collect();
        let matches = m.hash(&client_key).ct_eq(&self.verifier.stored_key);
        if !bool::from(matches) {
            return Err(ScramError::WrongProof);
        }
        let server_signature = m.hmac(&self.verifier.server_key, &auth);
        Ok(format!("v={}", B64.encode(server_signature)).into_bytes())
    }
}

/// What the gateway knows of its password for a host: the password, and SaltedPasswords for
/// the salts the host used (RFC 5802 §5.1 lets a client keep those instead of the password,
/// since servers keep their salt).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ClientSecret {
    pub password: Option<String>,
    pub salted: Vec<Salted>,
}

impl std::fmt::Debug for ClientSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientSecret")
            .field("password", &self.password.as_ref().map(|_| ".."))
            .field("salted", &self.salted)
            .finish()
    }
}

/// A SaltedPassword and what it is valid for.
#[derive(Clone, PartialEq, Eq)]
pub struct Salted {
    pub mechanism: Mechanism,
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub salted_password: Vec<u8>,
}

impl std::fmt::Debug for Salted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Salted")
            .field("mechanism", &self.mechanism)
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

/// The client's side, from its first message to the server's signature.
pub struct ClientExchange {
    mechanism: Mechanism,
    nonce: String,
    bare: String,
}

/// The server's first message, as the client reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFirst {
    pub nonce: String,
    pub salt: Vec<u8>,
    pub iterations: u32,
}

impl ServerFirst {
    /// Parses `r=…,s=…,i=…` (or a server's `e=` refusal).
    pub fn parse(message: &[u8]) -> Result<Self, ScramError> {
        let message = text(message)?;
        if let Some(error) = message.strip_prefix("e=") {
            return Err(ScramError::ServerRefused(error.to_string()));
        }
        let mut fields = message.split(',');
        if fields.clone().next().is_some_and(|f| f.starts_with("m=")) {
            return Err(ScramError::Extension);
        }
        let nonce = attribute(fields.next(), 'r', "no r= nonce")?;
        let salt = attribute(fields.next(), 's', "no s= salt")?;
        let iterations = attribute(fields.next(), 'i', "no i= iteration count")?;
        let salt = B64
            .decode(salt)
            .map_err(|_| ScramError::Malformed("the salt is not base64"))?;
        let iterations: u32 = iterations
            .parse()
            .map_err(|_| ScramError::Malformed("the iteration count is not a number"))?;
        if !is_printable(nonce) || salt.is_empty() || iterations == 0 {
            return Err(ScramError::Malformed(
                "empty nonce or salt, or no iterations",
            ));
        }
        Ok(Self {
            nonce: nonce.to_string(),
            salt,
            iterations,
        })
    }
}

/// The client after its final message: the server's signature it expects.
pub struct AwaitingServerFinal {
    mechanism: Mechanism,
    server_signature: Vec<u8>,
    salted: Salted,
}

impl ClientExchange {
    /// Starts a login as `user` with `client_nonce`; returns the client-first message.
    pub fn start(mechanism: Mechanism, user: &str, client_nonce: &str) -> (Self, Vec<u8>) {
        let bare = format!("n={},r={client_nonce}", escape_name(user));
        let first = format!("n,,{bare}");
        let exchange = Self {
            mechanism,
            nonce: client_nonce.to_string(),
            bare,
        };
        (exchange, first.into_bytes())
    }

    /// Answers the server's first message with the proof for `secret`: a SaltedPassword made
    /// for this salt, iteration count and mechanism if it holds one, else the password, salted
    /// here (at most [`MAX_CLIENT_ITERATIONS`]).
    pub fn respond(
        self,
        server_first: &[u8],
        secret: &ClientSecret,
    ) -> Result<(AwaitingServerFinal, Vec<u8>), ScramError> {
        let parsed = ServerFirst::parse(server_first)?;
        if !parsed.nonce.starts_with(&self.nonce) || parsed.nonce.len() == self.nonce.len() {
            return Err(ScramError::Continuity);
        }
        let m = self.mechanism;
        let cached = secret.salted.iter().find(|s| {
            s.mechanism == m && s.salt == parsed.salt && s.iterations == parsed.iterations
        });
        let salted = match (cached, &secret.password) {
            (Some(s), _) => s.clone(),
            (None, Some(password)) => {
                if parsed.iterations > MAX_CLIENT_ITERATIONS {
                    return Err(ScramError::Iterations {
                        got: parsed.iterations,
                        max: MAX_CLIENT_ITERATIONS,
                    });
                }
                Salted {
                    mechanism: m,
                    iterations: parsed.iterations,
                    salted_password: m.salted_password(
                        password,
                        &parsed.salt,
                        parsed.iterations,
                    )?,
                    salt: parsed.salt.clone(),
                }
            }
            (None, None) => return Err(ScramError::StaleSalted),
        };
        let server_first = std::str::from_utf8(server_first).unwrap_or_default();
        // "biws" is base64("n,,"): no channel binding, no authzid.
        let without_proof = format!("c=biws,r={}", parsed.nonce);
        let auth = [
            self.bare.as_bytes(),
            b",",
            server_first.as_bytes(),
            b",",
            without_proof.as_bytes(),
        ];
        let client_key = m.hmac(&salted.salted_password, &[b"Client Key"]);
        let stored_key = m.hash(&client_key);
        let client_signature = m.hmac(&stored_key, &auth);
        let proof: Vec<u8> = client_key
            .iter()
            .zip(&client_signature)
            .map(|(k, s)| k ^ s)
            .collect();
        let server_key = m.hmac(&salted.salted_password, &[b"Server Key"]);
        let next = AwaitingServerFinal {
            mechanism: m,
            server_signature: m.hmac(&server_key, &auth),
            salted,
        };
        let message = format!("{without_proof},p={}", B64.encode(proof));
        Ok((next, message.into_bytes()))
    }
}

impl AwaitingServerFinal {
    /// Checks the server's `v=` signature (constant time); on success the server has proved it
    /// knows the password's keys, and the SaltedPassword may be kept instead of the password.
    pub fn verify(self, server_final: &[u8]) -> Result<Salted, ScramError> {
        let message = text(server_final)?;
        if let Some(error) = message.strip_prefix("e=") {
            return Err(ScramError::ServerRefused(error.to_string()));
        }
        let signature = attribute(message.split(',').next(), 'v', "no v= signature")?;
        let signature = B64
            .decode(signature)
            .map_err(|_| ScramError::Malformed("the signature is not base64"))?;
        if signature.len() != self.mechanism.hash_len()
            || !bool::from(signature.ct_eq(&self.server_signature))
        {
            return Err(ScramError::BadServerSignature);
        }
        Ok(self.salted)
    }
}

#[cfg(test)]
mod tests;
