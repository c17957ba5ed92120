//! OPAQUE's two halves as pure steps (bytes in, bytes out), on one cipher suite: ristretto255,
//! 3DH with SHA-512, no key stretching — the secrets are random and at least 128 bits, and a
//! slow hash would cost the gateway ~20 ms per connection (`secondary-checks.md`).

use opaque_ke::{
    ClientLogin, ClientLoginFinishParameters, ClientRegistration,
    ClientRegistrationFinishParameters, CredentialFinalization, CredentialRequest,
    CredentialResponse, Identifiers, RegistrationRequest, RegistrationResponse, RegistrationUpload,
    ServerLogin, ServerLoginParameters, ServerRegistration, ServerSetup,
};
use rand::rngs::OsRng;

use crate::{context, Binding, PakeError, Purpose};

/// The cipher suite of every exchange.
pub struct Suite;

impl opaque_ke::CipherSuite for Suite {
    type OprfCs = opaque_ke::Ristretto255;
    type KeyExchange = opaque_ke::TripleDh<opaque_ke::Ristretto255, sha2::Sha512>;
    type Ksf = opaque_ke::ksf::Identity;
}

/// The agent's OPAQUE server keys (OPRF seed and key pair), made once at first start and kept
/// in its state directory (0600). Not a secret the gateway proves: holding them does not let
/// anyone pass the check.
#[derive(Clone)]
pub struct ServerKeys(ServerSetup<Suite>);

impl ServerKeys {
    pub fn generate() -> ServerKeys {
        ServerKeys(ServerSetup::new(&mut OsRng))
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        self.0.serialize().to_vec()
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<ServerKeys, PakeError> {
        ServerSetup::deserialize(bytes)
            .map(ServerKeys)
            .map_err(|_| PakeError::Protocol("unreadable OPAQUE server keys".into()))
    }
}

/// What the server side keeps of a secret: the OPAQUE registration record (the "password
/// file"). It lets the server check a proof of the secret, not make one.
#[derive(Clone)]
pub struct Record(ServerRegistration<Suite>);

impl Record {
    pub fn to_bytes(&self) -> Vec<u8> {
        self.0.serialize().to_vec()
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Record, PakeError> {
        ServerRegistration::deserialize(bytes)
            .map(Record)
            .map_err(|_| PakeError::Protocol("unreadable OPAQUE record".into()))
    }

    /// Runs both halves of a registration in one place — for whoever holds the secret and
    /// keeps only the record (the broker, for an enrollment token).
    pub fn register(
        keys: &ServerKeys,
        secret: &[u8],
        credential: &[u8],
    ) -> Result<Record, PakeError> {
        let (client, request) = RegistrationClient::start(secret)?;
        let response = registration_response(keys, &request, credential)?;
        let upload = client.finish(secret, &response)?;
        Record::from_upload(&upload)
    }

    /// The record a client's registration upload makes.
    pub fn from_upload(upload: &[u8]) -> Result<Record, PakeError> {
        let upload = RegistrationUpload::<Suite>::deserialize(upload)
            .map_err(|_| malformed("registration upload"))?;
        Ok(Record(ServerRegistration::finish(upload)))
    }
}

fn malformed(what: &str) -> PakeError {
    PakeError::Protocol(format!("malformed {what}"))
}

fn ids() -> Identifiers<'static> {
    Identifiers {
        client: Some(b"virtgate gateway"),
        server: Some(b"virtgate agent"),
    }
}

/// The side that knows the secret, registering it.
pub struct RegistrationClient(ClientRegistration<Suite>);

impl RegistrationClient {
    /// Returns the state and the RegistrationRequest to send.
    pub fn start(secret: &[u8]) -> Result<(RegistrationClient, Vec<u8>), PakeError> {
        let started = ClientRegistration::<Suite>::start(&mut OsRng, secret)
            .map_err(|_| PakeError::Protocol("cannot start a registration".into()))?;
        Ok((
            RegistrationClient(started.state),
            started.message.serialize().to_vec(),
        ))
    }

    /// Takes the RegistrationResponse; returns the RegistrationUpload to send.
    pub fn finish(self, secret: &[u8], response: &[u8]) -> Result<Vec<u8>, PakeError> {
        let response = RegistrationResponse::<Suite>::deserialize(response)
            .map_err(|_| malformed("registration response"))?;
        let params = ClientRegistrationFinishParameters::new(ids(), None);
        let finished = self
            .0
            .finish(&mut OsRng, secret, response, params)
            .map_err(|_| malformed("registration response"))?;
        Ok(finished.message.serialize().to_vec())
    }
}

/// The server's answer to a RegistrationRequest.
pub fn registration_response(
    keys: &ServerKeys,
    request: &[u8],
    credential: &[u8],
) -> Result<Vec<u8>, PakeError> {
    let request = RegistrationRequest::<Suite>::deserialize(request)
        .map_err(|_| malformed("registration request"))?;
    let response = ServerRegistration::<Suite>::start(&keys.0, request, credential)
        .map_err(|_| malformed("registration request"))?;
    Ok(response.message.serialize().to_vec())
}

/// The side that knows the secret, proving it.
pub struct LoginClient(ClientLogin<Suite>);

impl LoginClient {
    /// Returns the state and KE1.
    pub fn start(secret: &[u8]) -> Result<(LoginClient, Vec<u8>), PakeError> {
        let started = ClientLogin::<Suite>::start(&mut OsRng, secret)
            .map_err(|_| PakeError::Protocol("cannot start a login".into()))?;
        Ok((
            LoginClient(started.state),
            started.message.serialize().to_vec(),
        ))
    }

    /// Checks the server's KE2 — its proof that it holds the record — and returns KE3.
    /// A wrong secret or another TLS session gives [`PakeError::ProofFailed`].
    pub fn finish(
        self,
        secret: &[u8],
        ke2: &[u8],
        purpose: Purpose,
        binding: &Binding,
    ) -> Result<Vec<u8>, PakeError> {
        let ke2 = CredentialResponse::<Suite>::deserialize(ke2).map_err(|_| malformed("KE2"))?;
        let context = context(purpose, binding);
        let params = ClientLoginFinishParameters::new(Some(&context), ids(), None);
        let finished = self
            .0
            .finish(&mut OsRng, secret, ke2, params)
            .map_err(|_| PakeError::ProofFailed)?;
        Ok(finished.message.serialize().to_vec())
    }
}

/// The side that holds the record, checking a proof.
pub struct LoginServer(ServerLogin<Suite>);

impl LoginServer {
    /// Answers KE1 with KE2. Without a record (`None`) the answer is a decoy that looks the
    /// same and can never verify.
    pub fn start(
        keys: &ServerKeys,
        record: Option<&Record>,
        credential: &[u8],
        ke1: &[u8],
        purpose: Purpose,
        binding: &Binding,
    ) -> Result<(LoginServer, Vec<u8>), PakeError> {
        let ke1 = CredentialRequest::<Suite>::deserialize(ke1).map_err(|_| malformed("KE1"))?;
        let context = context(purpose, binding);
        let params = ServerLoginParameters {
            context: Some(&context),
            identifiers: ids(),
        };
        let started = ServerLogin::start(
            &mut OsRng,
            &keys.0,
            record.map(|r| r.0.clone()),
            ke1,
            credential,
            params,
        )
        .map_err(|_| malformed("KE1"))?;
        Ok((
            LoginServer(started.state),
            started.message.serialize().to_vec(),
        ))
    }

    /// Checks KE3, the client's proof. A wrong secret or another TLS session gives
    /// [`PakeError::ProofFailed`].
    pub fn finish(self, ke3: &[u8], purpose: Purpose, binding: &Binding) -> Result<(), PakeError> {
        let ke3 =
            CredentialFinalization::<Suite>::deserialize(ke3).map_err(|_| malformed("KE3"))?;
        let context = context(purpose, binding);
        let params = ServerLoginParameters {
            context: Some(&context),
            identifiers: ids(),
        };
        self.0
            .finish(ke3, params)
            .map(drop)
            .map_err(|_| PakeError::ProofFailed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The client's KE3 (or why not), and the server's verdict on it.
    type Outcome = (Result<Vec<u8>, PakeError>, Option<Result<(), PakeError>>);

    fn login(
        keys: &ServerKeys,
        record: Option<&Record>,
        secret: &[u8],
        client_binding: &Binding,
        server_binding: &Binding,
    ) -> Outcome {
        let (client, ke1) = LoginClient::start(secret).unwrap();
        let (server, ke2) =
            LoginServer::start(keys, record, b"h", &ke1, Purpose::Relay, server_binding).unwrap();
        let ke3 = client.finish(secret, &ke2, Purpose::Relay, client_binding);
        let verdict = ke3
            .as_ref()
            .ok()
            .map(|ke3| server.finish(ke3, Purpose::Relay, server_binding));
        (ke3, verdict)
    }

    #[test]
    fn a_registered_secret_logs_in_and_nothing_else_does() {
        let keys = ServerKeys::generate();
        let record = Record::register(&keys, b"0123456789abcdef", b"h").unwrap();
        let b = Binding::from_bytes([1; 32]);
        let (ke3, verdict) = login(&keys, Some(&record), b"0123456789abcdef", &b, &b);
        assert_eq!(ke3.unwrap().len(), 64);
        assert!(verdict.unwrap().is_ok());

        let (ke3, _) = login(&keys, Some(&record), b"0123456789abcdeX", &b, &b);
        assert!(matches!(ke3, Err(PakeError::ProofFailed)));
        let (ke3, _) = login(&keys, None, b"0123456789abcdef", &b, &b);
        assert!(
            matches!(ke3, Err(PakeError::ProofFailed)),
            "the decoy never verifies"
        );
    }

    #[test]
    fn two_sides_on_different_tls_sessions_fail_both_ways() {
        let keys = ServerKeys::generate();
        let record = Record::register(&keys, b"0123456789abcdef", b"h").unwrap();
        let (a, b) = (Binding::from_bytes([1; 32]), Binding::from_bytes([2; 32]));
        let (ke3, _) = login(&keys, Some(&record), b"0123456789abcdef", &a, &b);
        assert!(matches!(ke3, Err(PakeError::ProofFailed)));
    }

    #[test]
    fn keys_and_records_survive_being_stored() {
        let keys = ServerKeys::generate();
        let record = Record::register(&keys, b"0123456789abcdef", b"h").unwrap();
        let keys = ServerKeys::from_bytes(&keys.to_bytes()).unwrap();
        let record = Record::from_bytes(&record.to_bytes()).unwrap();
        let b = Binding::from_bytes([3; 32]);
        let (_, verdict) = login(&keys, Some(&record), b"0123456789abcdef", &b, &b);
        assert!(verdict.unwrap().is_ok());
        assert!(Record::from_bytes(&[0; 10]).is_err());
    }
}
