//! Does a private key file belong to a certificate?
//!
//! libvirt setups meet three key encodings: PKCS#8 (rcgen, `certtool --pkcs8`), and the legacy
//! PKCS#1 RSA and SEC1 EC encodings that `certtool --generate-privkey` writes by default. All
//! three carry the public half (RSA modulus and exponent, EC point), so comparing that with
//! the certificate's public key catches swapped or stale files without needing a parser for
//! each format: a small DER walker is enough.

use x509_parser::certificate::X509Certificate;
use x509_parser::public_key::PublicKey;

/// The public half of a key, in a form both a certificate and a private key file yield.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PublicHalf {
    Rsa {
        modulus: Vec<u8>,
        exponent: Vec<u8>,
    },
    /// The encoded EC point (`04 || X || Y`).
    Ec(Vec<u8>),
}

pub(crate) fn from_certificate(cert: &X509Certificate<'_>) -> Option<PublicHalf> {
    match cert.public_key().parsed().ok()? {
        PublicKey::RSA(rsa) => Some(PublicHalf::Rsa {
            modulus: strip_zeros(rsa.modulus),
            exponent: strip_zeros(rsa.exponent),
        }),
        PublicKey::EC(point) => Some(PublicHalf::Ec(point.data().to_vec())),
        _ => None,
    }
}

/// The public half stored in a private key, given its PEM label and DER. `None` when the
/// encoding does not carry it (e.g. SEC1 without the optional public key, Ed25519 PKCS#8 v1).
pub(crate) fn from_private_key(label: &str, der: &[u8]) -> Option<PublicHalf> {
    match label {
        "PRIVATE KEY" => {
            // PrivateKeyInfo ::= SEQUENCE { version, algorithm, privateKey OCTET STRING, ... }
            let items = sequence(der)?;
            let (tag, inner) = *items.get(2)?;
            if tag != OCTET_STRING {
                return None;
            }
            from_inner(inner)
        }
        "RSA PRIVATE KEY" | "EC PRIVATE KEY" => from_inner(der),
        _ => None,
    }
}

/// RSAPrivateKey (RFC 8017) or ECPrivateKey (RFC 5915), told apart by their second field.
fn from_inner(der: &[u8]) -> Option<PublicHalf> {
    let items = sequence(der)?;
    match items.get(1)? {
        // RSAPrivateKey ::= SEQUENCE { version, modulus, publicExponent, ... }
        (INTEGER, modulus) => Some(PublicHalf::Rsa {
            modulus: strip_zeros(modulus),
            exponent: strip_zeros(items.get(2)?.1),
        }),
        // ECPrivateKey ::= SEQUENCE { version, privateKey OCTET STRING,
        //                             parameters [0] OPTIONAL, publicKey [1] BIT STRING OPTIONAL }
        (OCTET_STRING, _) => {
            let (_, explicit) = items.iter().find(|(tag, _)| *tag == CONTEXT_1)?;
            let (tag, bits, _) = tlv(explicit)?;
            // The first content byte of a BIT STRING counts unused bits; a point has none.
            match (tag, bits.split_first()) {
                (BIT_STRING, Some((0, point))) => Some(PublicHalf::Ec(point.to_vec())),
                _ => None,
            }
        }
        _ => None,
    }
}

const INTEGER: u8 = 0x02;
const BIT_STRING: u8 = 0x03;
const OCTET_STRING: u8 = 0x04;
const SEQUENCE: u8 = 0x30;
const CONTEXT_1: u8 = 0xa1;

fn strip_zeros(bytes: &[u8]) -> Vec<u8> {
    let first = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    bytes[first..].to_vec()
}

/// One DER element: tag, contents, and what follows it.
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// The elements of the SEQUENCE `der` starts with.
fn sequence(der: &[u8]) -> Option<Vec<(u8, &[u8])>> {
    let (tag, mut contents, _) = tlv(der)?;
    if tag != SEQUENCE {
        return None;
    }
    let mut items = Vec::new();
    while !contents.is_empty() {
        let (tag, value, rest) = tlv(contents)?;
        items.push((tag, value));
        contents = rest;
    }
    Some(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_long_form_lengths() {
        let mut der = vec![0x04, 0x82, 0x01, 0x00];
        der.extend(std::iter::repeat_n(7u8, 256));
        der.push(0xff);
        let (tag, value, rest) = tlv(&der).unwrap();
        assert_eq!((tag, value.len(), rest), (0x04, 256, &[0xff][..]));
    }

    #[test]
    fn truncated_input_is_not_a_key() {
        assert_eq!(tlv(&[0x30, 0x05, 0x02]), None);
        assert_eq!(from_private_key("PRIVATE KEY", &[0x30, 0x80]), None);
        assert_eq!(from_private_key("PRIVATE KEY", &[]), None);
    }
}
