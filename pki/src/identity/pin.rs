//! SPKI SHA-256 pins: the key a host is trusted by.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use sha2::{Digest, Sha256};

/// The SHA-256 of a certificate's SubjectPublicKeyInfo: survives re-issuing a certificate for
/// the same key, changes with the key. Written as 64 lower-case hex digits.
///
/// Pins are public values, so plain (not constant-time) comparison is fine.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pin([u8; 32]);

impl Pin {
    /// The pin of a DER-encoded SubjectPublicKeyInfo.
    pub fn of_spki(spki_der: &[u8]) -> Pin {
        Pin(Sha256::digest(spki_der).into())
    }

    pub const fn from_bytes(bytes: [u8; 32]) -> Pin {
        Pin(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// `pin-sha256:BASE64`, as curl's `--pinnedpubkey` and HPKP spell it.
    pub fn to_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.0)
    }
}

impl fmt::Display for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pin({self})")
    }
}

/// Text that is not a pin.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{given:?} is not a SPKI SHA-256 pin: write 64 hex digits (optionally after sha256: or \
     sha256//), or pin-sha256:BASE64 as curl prints it; `virtgate hosts` shows each host's pin"
)]
pub struct PinError {
    pub given: String,
}

/// Prefixes people paste pins with; each may be followed by hex or base64.
const PREFIXES: [&str; 4] = ["pin-sha256:", "pin-sha256=", "sha256//", "sha256:"];

impl FromStr for Pin {
    type Err = PinError;

    /// Accepts 64 hex digits in any case, or the base64 of the 32 bytes (44 characters, the
    /// form curl and HPKP use), optionally after `sha256:`, `sha256//` or `pin-sha256:`, and
    /// optionally quoted. The two encodings cannot be confused: their lengths differ.
    fn from_str(text: &str) -> Result<Pin, PinError> {
        let error = || PinError {
            given: text.to_string(),
        };
        let mut body = text.trim();
        if let Some(prefix) = PREFIXES
            .iter()
            .find(|p| body.len() >= p.len() && body[..p.len()].eq_ignore_ascii_case(p))
        {
            body = &body[prefix.len()..];
        }
        let body = body.trim_matches('"');
        let bytes = if body.len() == 64 {
            hex::decode(body).map_err(|_| error())?
        } else {
            base64::engine::general_purpose::STANDARD
                .decode(body)
                .map_err(|_| error())?
        };
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| error())?;
        Ok(Pin(bytes))
    }
}

impl serde::Serialize for Pin {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Pin {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Pin, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn pin() -> Pin {
        HEX.parse().unwrap()
    }

    #[test]
    fn a_pin_is_written_as_64_lower_case_hex_digits() {
        assert_eq!(pin().to_string(), HEX);
        assert_eq!(format!("{:?}", pin()), format!("Pin({HEX})"));
    }

    #[test]
    fn every_spelling_people_paste_reads_as_the_same_pin() {
        let base64 = pin().to_base64();
        for spelling in [
            HEX.to_string(),
            HEX.to_ascii_uppercase(),
            format!("sha256:{HEX}"),
            format!("SHA256:{HEX}"),
            format!("sha256//{HEX}"),
            format!("  {HEX}\n"),
            format!("pin-sha256:{base64}"),
            format!("pin-sha256=\"{base64}\""),
            format!("sha256//{base64}"),
            base64,
        ] {
            assert_eq!(spelling.parse::<Pin>(), Ok(pin()), "{spelling:?}");
        }
    }

    #[test]
    fn anything_else_is_refused_saying_what_a_pin_looks_like() {
        for bad in [
            "",
            "abc",
            &HEX[..63],
            &format!("{HEX}00"),
            &HEX.replace('a', "g"),
            "sha1:0123",
            "pin-sha256:AAAA",
        ] {
            let err = bad.parse::<Pin>().unwrap_err().to_string();
            assert!(err.contains("64 hex digits"), "{bad:?}: {err}");
            assert!(err.contains("pin-sha256:BASE64"), "{err}");
        }
    }

    #[test]
    fn a_pin_is_a_hex_string_in_json() {
        let json = serde_json::to_string(&pin()).unwrap();
        assert_eq!(json, format!("\"{HEX}\""));
        assert_eq!(serde_json::from_str::<Pin>(&json).unwrap(), pin());
        assert!(serde_json::from_str::<Pin>("\"nope\"").is_err());
    }

    #[test]
    fn the_pin_of_a_key_is_the_sha256_of_its_subject_public_key_info() {
        // SHA-256 of the empty input, a published test vector.
        assert_eq!(
            Pin::of_spki(b"").to_string(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
