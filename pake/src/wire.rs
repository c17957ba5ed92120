//! The check's messages on the wire: `type (1 byte) | length (2 bytes, big endian) | body`,
//! bodies at most [`MAX_BODY`] bytes. Decoding is pure and total — any bytes in, a frame or an
//! error out, never a panic — so `pake/fuzz` feeds it directly.

/// Largest body of any frame (the biggest OPAQUE message, KE2, is 320 bytes).
pub const MAX_BODY: usize = 1024;
/// Longest reason text in a refusal.
pub const MAX_REASON: usize = 512;
/// Most gateway keys an agent accepts at once.
pub const MAX_PINS: usize = 16;

/// What a connection to an agent is for; part of the OPAQUE context, so a transcript of one
/// purpose is worth nothing for another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// The gateway proves the per-host secret; then the agent relays to libvirt.
    Relay,
    /// The broker proves the per-host secret; then it registers a new one (and gateway keys).
    Rotate,
    /// The agent proves the enrollment token to the broker (roles reversed: the broker holds
    /// the token's record); then the broker registers the first per-host secret.
    Enroll,
}

impl Purpose {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Relay => "relay",
            Self::Rotate => "rotate",
            Self::Enroll => "enroll",
        }
    }

    fn code(self) -> u8 {
        match self {
            Self::Relay => 1,
            Self::Rotate => 2,
            Self::Enroll => 3,
        }
    }

    fn from_code(code: u8) -> Option<Purpose> {
        match code {
            1 => Some(Self::Relay),
            2 => Some(Self::Rotate),
            3 => Some(Self::Enroll),
            _ => None,
        }
    }
}

/// The first message, from the TLS client (gateway or broker).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub purpose: Purpose,
    /// Which per-host secret the client proves (relay, rotate); 0 for enrollment.
    pub generation: u32,
    /// The enrollment token's public id (enrollment only).
    pub token_id: String,
    /// OPAQUE KE1 (relay, rotate); empty for enrollment, where the agent sends KE1.
    pub ke1: Vec<u8>,
}

/// What the broker tells an agent when it registers a per-host secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The name the gateway knows the host by.
    pub host: String,
    /// The generation of the secret being registered.
    pub generation: u32,
    /// SPKI SHA-256 of every gateway key the agent accepts from now on.
    pub gateway_pins: Vec<[u8; 32]>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Hello(Hello),
    Ke1(Vec<u8>),
    Ke2(Vec<u8>),
    Ke3(Vec<u8>),
    /// Settings and an OPAQUE RegistrationRequest.
    Register {
        settings: Settings,
        request: Vec<u8>,
    },
    RegistrationResponse(Vec<u8>),
    Upload(Vec<u8>),
    Ok,
    /// The sender refuses, and says why (shown to operators; never a secret).
    Refused(String),
    /// The sender checked the other side's proof and it did not verify; says what it checked.
    ProofFailed(String),
}

/// Why bytes are not a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("need {0} more bytes")]
    Incomplete(usize),
    #[error("unknown message type {0}")]
    UnknownType(u8),
    #[error("message of {0} bytes is longer than {MAX_BODY}")]
    TooLong(usize),
    #[error("malformed {0}")]
    Malformed(&'static str),
}

impl Frame {
    fn code(&self) -> u8 {
        match self {
            Self::Hello(_) => 1,
            Self::Ke1(_) => 2,
            Self::Ke2(_) => 3,
            Self::Ke3(_) => 4,
            Self::Register { .. } => 5,
            Self::RegistrationResponse(_) => 6,
            Self::Upload(_) => 7,
            Self::Ok => 8,
            Self::Refused(_) => 9,
            Self::ProofFailed(_) => 10,
        }
    }

    /// A short name for error messages.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Hello(_) => "hello",
            Self::Ke1(_) => "KE1",
            Self::Ke2(_) => "KE2",
            Self::Ke3(_) => "KE3",
            Self::Register { .. } => "registration request",
            Self::RegistrationResponse(_) => "registration response",
            Self::Upload(_) => "registration upload",
            Self::Ok => "ok",
            Self::Refused(_) => "refusal",
            Self::ProofFailed(_) => "failed proof",
        }
    }

    /// The frame's bytes. Bodies longer than [`MAX_BODY`] are cut (only a refusal's text could
    /// be; callers keep everything else within bounds).
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::new();
        match self {
            Self::Hello(h) => {
                body.push(h.purpose.code());
                body.extend_from_slice(&h.generation.to_be_bytes());
                let id = &h.token_id.as_bytes()[..h.token_id.len().min(255)];
                body.push(id.len() as u8);
                body.extend_from_slice(id);
                body.extend_from_slice(&h.ke1);
            }
            Self::Ke1(b)
            | Self::Ke2(b)
            | Self::Ke3(b)
            | Self::RegistrationResponse(b)
            | Self::Upload(b) => body.extend_from_slice(b),
            Self::Register { settings, request } => {
                body.extend_from_slice(&settings.generation.to_be_bytes());
                let host = &settings.host.as_bytes()[..settings.host.len().min(255)];
                body.push(host.len() as u8);
                body.extend_from_slice(host);
                let pins = &settings.gateway_pins[..settings.gateway_pins.len().min(MAX_PINS)];
                body.push(pins.len() as u8);
                for pin in pins {
                    body.extend_from_slice(pin);
                }
                body.extend_from_slice(request);
            }
            Self::Ok => {}
            Self::Refused(reason) | Self::ProofFailed(reason) => {
                let mut end = reason.len().min(MAX_REASON);
                while !reason.is_char_boundary(end) {
                    end -= 1;
                }
                body.extend_from_slice(&reason.as_bytes()[..end]);
            }
        }
        body.truncate(MAX_BODY);
        let mut out = Vec::with_capacity(3 + body.len());
        out.push(self.code());
        out.extend_from_slice(&(body.len() as u16).to_be_bytes());
        out.extend_from_slice(&body);
        out
    }

    /// Reads one frame from the start of `bytes`: the frame and how many bytes it took.
    pub fn decode(bytes: &[u8]) -> Result<(Frame, usize), WireError> {
        let (code, len) = header(bytes)?;
        let total = 3 + len;
        if bytes.len() < total {
            return Err(WireError::Incomplete(total - bytes.len()));
        }
        Ok((Frame::from_body(code, &bytes[3..total])?, total))
    }

    /// The frame of type `code` with `body` (already length-checked).
    pub fn from_body(code: u8, body: &[u8]) -> Result<Frame, WireError> {
        let v = || body.to_vec();
        Ok(match code {
            1 => Frame::Hello(hello(body)?),
            2 => Frame::Ke1(v()),
            3 => Frame::Ke2(v()),
            4 => Frame::Ke3(v()),
            5 => register(body)?,
            6 => Frame::RegistrationResponse(v()),
            7 => Frame::Upload(v()),
            8 if body.is_empty() => Frame::Ok,
            8 => return Err(WireError::Malformed("ok")),
            9 if body.len() <= MAX_REASON => Frame::Refused(String::from_utf8_lossy(body).into()),
            9 => return Err(WireError::Malformed("refusal")),
            10 if body.len() <= MAX_REASON => {
                Frame::ProofFailed(String::from_utf8_lossy(body).into())
            }
            10 => return Err(WireError::Malformed("failed proof")),
            other => return Err(WireError::UnknownType(other)),
        })
    }
}

/// The type and body length of the frame `bytes` start with.
pub fn header(bytes: &[u8]) -> Result<(u8, usize), WireError> {
    if bytes.len() < 3 {
        return Err(WireError::Incomplete(3 - bytes.len()));
    }
    let code = bytes[0];
    if !(1..=10).contains(&code) {
        return Err(WireError::UnknownType(code));
    }
    let len = usize::from(u16::from_be_bytes([bytes[1], bytes[2]]));
    if len > MAX_BODY {
        return Err(WireError::TooLong(len));
    }
    Ok((code, len))
}

/// Splits `n` bytes off the front of `body`.
fn take<'a>(body: &mut &'a [u8], n: usize, what: &'static str) -> Result<&'a [u8], WireError> {
    if body.len() < n {
        return Err(WireError::Malformed(what));
    }
    let (head, tail) = body.split_at(n);
    *body = tail;
    Ok(head)
}

fn u32_of(body: &mut &[u8], what: &'static str) -> Result<u32, WireError> {
    let b = take(body, 4, what)?;
    Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

fn short_text(body: &mut &[u8], what: &'static str) -> Result<String, WireError> {
    let len = usize::from(take(body, 1, what)?[0]);
    let text = take(body, len, what)?;
    let text = std::str::from_utf8(text).map_err(|_| WireError::Malformed(what))?;
    if text.chars().any(char::is_control) {
        return Err(WireError::Malformed(what));
    }
    Ok(text.to_string())
}

fn hello(mut body: &[u8]) -> Result<Hello, WireError> {
    let purpose = Purpose::from_code(take(&mut body, 1, "hello")?[0])
        .ok_or(WireError::Malformed("hello purpose"))?;
    let generation = u32_of(&mut body, "hello")?;
    let token_id = short_text(&mut body, "hello token id")?;
    Ok(Hello {
        purpose,
        generation,
        token_id,
        ke1: body.to_vec(),
    })
}

fn register(mut body: &[u8]) -> Result<Frame, WireError> {
    let generation = u32_of(&mut body, "registration")?;
    let host = short_text(&mut body, "registration host")?;
    let count = usize::from(take(&mut body, 1, "registration")?[0]);
    if count > MAX_PINS {
        return Err(WireError::Malformed("registration: too many gateway keys"));
    }
    let mut gateway_pins = Vec::with_capacity(count);
    for _ in 0..count {
        let pin: [u8; 32] = take(&mut body, 32, "registration pin")?
            .try_into()
            .map_err(|_| WireError::Malformed("registration pin"))?;
        gateway_pins.push(pin);
    }
    Ok(Frame::Register {
        settings: Settings {
            host,
            generation,
            gateway_pins,
        },
        request: body.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_kind() -> Vec<Frame> {
        vec![
            Frame::Hello(Hello {
                purpose: Purpose::Relay,
                generation: 7,
                token_id: String::new(),
                ke1: vec![1; 96],
            }),
            Frame::Hello(Hello {
                purpose: Purpose::Enroll,
                generation: 0,
                token_id: "0a1b2c3d".into(),
                ke1: vec![],
            }),
            Frame::Ke1(vec![2; 96]),
            Frame::Ke2(vec![3; 320]),
            Frame::Ke3(vec![4; 64]),
            Frame::Register {
                settings: Settings {
                    host: "h1".into(),
                    generation: 2,
                    gateway_pins: vec![[9; 32], [8; 32]],
                },
                request: vec![5; 32],
            },
            Frame::RegistrationResponse(vec![6; 64]),
            Frame::Upload(vec![7; 192]),
            Frame::Ok,
            Frame::Refused("no".into()),
            Frame::ProofFailed("checked KE3".into()),
        ]
    }

    #[test]
    fn every_frame_reads_back_as_written() {
        for frame in every_kind() {
            let bytes = frame.encode();
            assert_eq!(Frame::decode(&bytes), Ok((frame.clone(), bytes.len())));
            for cut in 0..bytes.len() {
                assert!(
                    matches!(Frame::decode(&bytes[..cut]), Err(WireError::Incomplete(_))),
                    "{} cut at {cut}",
                    frame.name()
                );
            }
        }
    }

    #[test]
    fn lengths_beyond_the_bound_and_unknown_types_are_refused_from_the_header() {
        assert_eq!(header(&[1, 0x04, 0x01]), Err(WireError::TooLong(1025)));
        assert_eq!(header(&[0, 0, 0]), Err(WireError::UnknownType(0)));
        assert_eq!(header(&[42, 0, 0]), Err(WireError::UnknownType(42)));
    }

    #[test]
    fn a_refusal_longer_than_allowed_is_cut_at_a_character_boundary() {
        let long = "é".repeat(400);
        let bytes = Frame::Refused(long).encode();
        let (Frame::Refused(text), _) = Frame::decode(&bytes).unwrap() else {
            panic!("a refusal");
        };
        assert!(text.len() <= MAX_REASON && text.chars().all(|c| c == 'é'));
    }
}
