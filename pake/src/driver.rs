//! The exchanges over any `AsyncRead + AsyncWrite` — in practice a TLS 1.3 stream whose
//! [`Binding`] both sides took after the handshake. Each function is one side of one exchange;
//! callers bound them in time. The side whose check fails tells the other (a refusal frame)
//! before it returns [`PakeError::ProofFailed`], so both ends count the failure.
//!
//! ```text
//! relay / rotate (gateway or broker = TLS client, knows the secret; agent holds the record)
//!   client: Hello{purpose, generation, KE1}  ->
//!                                            <-  KE2          agent
//!   client: KE3                              ->
//!                                            <-  Ok | Refused agent
//!   rotate then: register()  /  answer_registration()
//!
//! enroll (broker = TLS client, holds the token's record; agent knows the token)
//!   broker: Hello{enroll, token id}          ->
//!                                            <-  KE1          agent
//!   broker: KE2                              ->
//!                                            <-  KE3          agent
//!   broker: register() — Register{settings, request} … Upload, Ok from the agent
//! ```

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::opaque::{registration_response, LoginClient, LoginServer, RegistrationClient};
use crate::wire::{self, Frame, Hello, Purpose, Settings};
use crate::{Binding, PakeError, Record, Secret, ServerKeys, Token};

/// Reads one frame (at most 3 + [`wire::MAX_BODY`] bytes).
pub async fn read_frame<S: AsyncRead + Unpin>(io: &mut S) -> Result<Frame, PakeError> {
    let mut head = [0u8; 3];
    match io.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(PakeError::Closed),
        Err(e) => return Err(e.into()),
    }
    let (code, len) = wire::header(&head).map_err(|e| PakeError::Protocol(e.to_string()))?;
    let mut body = vec![0u8; len];
    match io.read_exact(&mut body).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(PakeError::Closed),
        Err(e) => return Err(e.into()),
    }
    Frame::from_body(code, &body).map_err(|e| PakeError::Protocol(e.to_string()))
}

/// Writes one frame and flushes it.
pub async fn write_frame<S: AsyncWrite + Unpin>(
    io: &mut S,
    frame: &Frame,
) -> Result<(), PakeError> {
    io.write_all(&frame.encode()).await?;
    io.flush().await?;
    Ok(())
}

/// Tells the other side that the exchange is over and it passed.
pub async fn accept<S: AsyncWrite + Unpin>(io: &mut S) -> Result<(), PakeError> {
    write_frame(io, &Frame::Ok).await
}

/// Tells the other side it was refused and why (operators read it; never put a secret in it).
pub async fn refuse<S: AsyncWrite + Unpin>(io: &mut S, reason: &str) -> Result<(), PakeError> {
    write_frame(io, &Frame::Refused(reason.to_string())).await
}

fn unexpected(frame: &Frame, wanted: &str) -> PakeError {
    match frame {
        Frame::Refused(reason) => PakeError::Refused(reason.clone()),
        Frame::ProofFailed(_) => PakeError::ProofFailed,
        other => PakeError::Protocol(format!("expected {wanted}, got {}", other.name())),
    }
}

/// On a failed proof, tells the other side (best effort) and returns the failure: both ends
/// then report [`PakeError::ProofFailed`].
async fn failed<S: AsyncWrite + Unpin>(io: &mut S, e: PakeError, why: &str) -> PakeError {
    if matches!(e, PakeError::ProofFailed) {
        let _ = write_frame(io, &Frame::ProofFailed(why.to_string())).await;
    }
    e
}

/// The credential identifier of the per-host secret of `generation` (the OPRF key is derived
/// per identifier).
pub fn credential_for(generation: u32) -> Vec<u8> {
    format!("virtgate host secret {generation}").into_bytes()
}

/// Client of a relay or rotate exchange: proves `secret` (of `generation`) on this session.
/// `Ok` means the agent checked the proof and accepted the connection.
pub async fn prove<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    purpose: Purpose,
    generation: u32,
    secret: &Secret,
    binding: &Binding,
) -> Result<(), PakeError> {
    let (client, ke1) = LoginClient::start(secret.as_bytes())?;
    let hello = Hello {
        purpose,
        generation,
        token_id: String::new(),
        ke1,
    };
    write_frame(io, &Frame::Hello(hello)).await?;
    let ke2 = match read_frame(io).await? {
        Frame::Ke2(ke2) => ke2,
        other => return Err(unexpected(&other, "KE2")),
    };
    let ke3 = match client.finish(secret.as_bytes(), &ke2, purpose, binding) {
        Ok(ke3) => ke3,
        Err(e) => {
            return Err(failed(io, e, "the agent's proof did not verify for the gateway").await)
        }
    };
    write_frame(io, &Frame::Ke3(ke3)).await?;
    match read_frame(io).await? {
        Frame::Ok => Ok(()),
        other => Err(unexpected(&other, "the agent's verdict")),
    }
}

/// The first frame of a connection to an agent.
pub async fn read_hello<S: AsyncRead + Unpin>(io: &mut S) -> Result<Hello, PakeError> {
    match read_frame(io).await? {
        Frame::Hello(hello) => Ok(hello),
        other => Err(unexpected(&other, "hello")),
    }
}

/// Agent side of a relay or rotate exchange: checks the proof in `hello` against `record`
/// (`None`: a decoy answer that never verifies). On `Ok` the caller sends its verdict
/// ([`accept`] or [`refuse`]).
pub async fn check<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    hello: &Hello,
    keys: &ServerKeys,
    record: Option<&Record>,
    binding: &Binding,
) -> Result<(), PakeError> {
    let credential = credential_for(hello.generation);
    let (server, ke2) = LoginServer::start(
        keys,
        record,
        &credential,
        &hello.ke1,
        hello.purpose,
        binding,
    )?;
    write_frame(io, &Frame::Ke2(ke2)).await?;
    let ke3 = match read_frame(io).await? {
        Frame::Ke3(ke3) => ke3,
        other => return Err(unexpected(&other, "KE3")),
    };
    match server.finish(&ke3, hello.purpose, binding) {
        Ok(()) => Ok(()),
        Err(e) => Err(failed(
            io,
            e,
            "the gateway's proof of the host secret did not verify",
        )
        .await),
    }
}

/// Broker side of an enrollment: asks the agent to prove the token `token_id`, whose record
/// (made with `token_keys`) the broker holds. `Ok`: the agent holds the token.
pub async fn verify_token<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    token_id: &str,
    token_keys: &ServerKeys,
    token_record: &Record,
    binding: &Binding,
) -> Result<(), PakeError> {
    let hello = Hello {
        purpose: Purpose::Enroll,
        generation: 0,
        token_id: token_id.to_string(),
        ke1: Vec::new(),
    };
    write_frame(io, &Frame::Hello(hello)).await?;
    let ke1 = match read_frame(io).await? {
        Frame::Ke1(ke1) => ke1,
        other => return Err(unexpected(&other, "KE1")),
    };
    let credential = token_id.as_bytes();
    let (server, ke2) = LoginServer::start(
        token_keys,
        Some(token_record),
        credential,
        &ke1,
        Purpose::Enroll,
        binding,
    )?;
    write_frame(io, &Frame::Ke2(ke2)).await?;
    let ke3 = match read_frame(io).await? {
        Frame::Ke3(ke3) => ke3,
        other => return Err(unexpected(&other, "KE3")),
    };
    match server.finish(&ke3, Purpose::Enroll, binding) {
        Ok(()) => Ok(()),
        Err(e) => Err(failed(io, e, "the broker could not verify this agent's token: it is not the secret of that token id (was it pasted whole?)").await),
    }
}

/// Agent side of an enrollment, after the broker's hello named `token`'s id: proves the token.
/// `Ok` means the broker proved it holds the token's record; the broker's next frame says
/// whether it accepted the agent's proof ([`answer_registration`] reads it).
pub async fn prove_token<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    token: &Token,
    binding: &Binding,
) -> Result<(), PakeError> {
    let (client, ke1) = LoginClient::start(token.secret_bytes())?;
    write_frame(io, &Frame::Ke1(ke1)).await?;
    let ke2 = match read_frame(io).await? {
        Frame::Ke2(ke2) => ke2,
        other => return Err(unexpected(&other, "KE2")),
    };
    match client.finish(token.secret_bytes(), &ke2, Purpose::Enroll, binding) {
        Ok(ke3) => write_frame(io, &Frame::Ke3(ke3)).await,
        Err(e) => Err(failed(io, e, "the agent could not verify the broker's knowledge of its token: the token given to the agent is not this broker's (wrong, or pasted in part)").await),
    }
}

/// Broker side: registers `secret` with `settings` on an agent it has authenticated on this
/// session (a verified token or a proven per-host secret). `Ok`: the agent stored it.
pub async fn register<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    settings: &Settings,
    secret: &Secret,
) -> Result<(), PakeError> {
    let (client, request) = RegistrationClient::start(secret.as_bytes())?;
    let frame = Frame::Register {
        settings: settings.clone(),
        request,
    };
    write_frame(io, &frame).await?;
    let response = match read_frame(io).await? {
        Frame::RegistrationResponse(r) => r,
        other => return Err(unexpected(&other, "registration response")),
    };
    let upload = client.finish(secret.as_bytes(), &response)?;
    write_frame(io, &Frame::Upload(upload)).await?;
    match read_frame(io).await? {
        Frame::Ok => Ok(()),
        other => Err(unexpected(&other, "the agent's confirmation")),
    }
}

/// Agent side of a registration: answers with `keys` and returns the settings and the record
/// to keep. The caller stores them, then sends [`accept`].
pub async fn answer_registration<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    keys: &ServerKeys,
) -> Result<(Settings, Record), PakeError> {
    let (settings, request) = match read_frame(io).await? {
        Frame::Register { settings, request } => (settings, request),
        other => return Err(unexpected(&other, "registration request")),
    };
    let credential = credential_for(settings.generation);
    let response = registration_response(keys, &request, &credential)?;
    write_frame(io, &Frame::RegistrationResponse(response)).await?;
    let upload = match read_frame(io).await? {
        Frame::Upload(upload) => upload,
        other => return Err(unexpected(&other, "registration upload")),
    };
    Ok((settings, Record::from_upload(&upload)?))
}

#[cfg(test)]
mod tests;
