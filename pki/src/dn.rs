//! Subject DNs as text, `C=GB,O=Example,CN=alice`: written by [`dn_string`], read by
//! [`parse_dn`], one grammar for both.
//!
//! The text is a security boundary: access policies glob over it. So it is RFC 4514's string
//! form, in which every distinct name has a distinct spelling:
//! - RDNs in certificate order (as libvirt's `tls_allowed_dn_list` sees them, not RFC 4514's
//!   reversed order), joined by `,`; the attributes of a multi-valued RDN joined by `+`;
//! - attribute types by short name (`C`, `ST`, `L`, `O`, `OU`, `CN`, `serialNumber`, `DC`,
//!   `UID`, `EMAIL`), any other as its dotted OID;
//! - `,` `+` `"` `\` `<` `>` `;` in values escaped with `\`, as are a leading `#` or space and a
//!   trailing space; control characters as `\XX` hex bytes (NUL is `\00`);
//! - a value that is not a character string (or not decodable) as `#` and the hex of its DER.
//!
//! Character strings are compared as text: `CN=alice` as UTF8String, PrintableString or
//! BMPString is the same name, as in X.500 matching.

use rcgen::{DistinguishedName, DnType, DnValue};
use x509_parser::asn1_rs::{Any, Class, Tag, ToDer};
use x509_parser::x509::{AttributeTypeAndValue, X509Name};

use crate::PkiError;

/// The attributes a DN may use, in the spelling the parser accepts.
pub const SUPPORTED_ATTRIBUTES: [&str; 6] = ["C", "ST", "L", "O", "OU", "CN"];

/// Short names of attribute types, by OID; any other type is written as its dotted OID.
const SHORT_NAMES: [(&str, &str); 10] = [
    ("2.5.4.6", "C"),
    ("2.5.4.8", "ST"),
    ("2.5.4.7", "L"),
    ("2.5.4.10", "O"),
    ("2.5.4.11", "OU"),
    ("2.5.4.3", "CN"),
    ("2.5.4.5", "serialNumber"),
    ("0.9.2342.19200300.100.1.25", "DC"),
    ("0.9.2342.19200300.100.1.1", "UID"),
    ("1.2.840.113549.1.9.1", "EMAIL"),
];

/// A name as text; see the module documentation for the format.
pub fn dn_string(name: &X509Name<'_>) -> String {
    name.iter()
        .map(|rdn| {
            rdn.iter()
                .map(attribute_string)
                .collect::<Vec<_>>()
                .join("+")
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn attribute_string(attribute: &AttributeTypeAndValue<'_>) -> String {
    let oid = attribute.attr_type().to_id_string();
    let key = SHORT_NAMES
        .iter()
        .find(|(dotted, _)| *dotted == oid)
        .map_or(oid.as_str(), |(_, short)| short);
    let value = attribute.attr_value();
    match string_value(value) {
        Some(text) => format!("{key}={}", escape_value(&text)),
        None => format!("{key}=#{}", hex::encode(value_der(value))),
    }
}

/// The text of a character-string value; `None` for anything else, or bytes that do not
/// decode (TeletexString's character set is ambiguous, so it is never decoded).
fn string_value(value: &Any<'_>) -> Option<String> {
    if value.header.class() != Class::Universal || value.header.is_constructed() {
        return None;
    }
    let data = value.data;
    match value.tag() {
        Tag::Utf8String
        | Tag::PrintableString
        | Tag::Ia5String
        | Tag::NumericString
        | Tag::VisibleString => std::str::from_utf8(data).ok().map(str::to_string),
        Tag::BmpString if data.len() % 2 == 0 => {
            let units = data.chunks(2).map(|u| u16::from_be_bytes([u[0], u[1]]));
            char::decode_utf16(units)
                .collect::<Result<String, _>>()
                .ok()
        }
        Tag::UniversalString if data.len() % 4 == 0 => data
            .chunks(4)
            .map(|c| char::from_u32(u32::from_be_bytes([c[0], c[1], c[2], c[3]])))
            .collect(),
        _ => None,
    }
}

fn value_der(value: &Any<'_>) -> Vec<u8> {
    // Re-encoding a parsed value writes to memory and cannot fail in practice; the contents
    // alone are still a faithful rendering if it ever did.
    value.to_der_vec().unwrap_or_else(|_| value.data.to_vec())
}

/// RFC 4514 §2.4 escaping of one attribute value.
fn escape_value(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    let last = text.chars().count().saturating_sub(1);
    for (i, c) in text.chars().enumerate() {
        match c {
            ',' | '+' | '"' | '\\' | '<' | '>' | ';' => {
                out.push('\\');
                out.push(c);
            }
            '#' if i == 0 => out.push_str("\\#"),
            ' ' if i == 0 || i == last => out.push_str("\\ "),
            c if c.is_control() => {
                let mut utf8 = [0; 4];
                for byte in c.encode_utf8(&mut utf8).bytes() {
                    out.push_str(&format!("\\{byte:02X}"));
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// One attribute of a DN read from text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attribute {
    /// As written, e.g. `CN`, `cn` or `2.5.4.3`.
    pub key: String,
    pub value: AttributeValue,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttributeValue {
    Text(String),
    /// `#hex`: the DER of a value that is not a character string.
    Der(Vec<u8>),
}

/// Reads the text [`dn_string`] writes back into its RDNs. Lenient where it cannot be
/// ambiguous: spaces around `,`, `+` and `=`, any character escaped with `\`, and `"` `<` `>`
/// `;` `=` unescaped inside values.
pub fn read_dn(text: &str) -> Result<Vec<Vec<Attribute>>, String> {
    split_unescaped(text, ',')
        .into_iter()
        .map(|rdn| {
            if rdn.trim().is_empty() {
                return Err("it has an empty component (two commas in a row?)".to_string());
            }
            let attributes = split_unescaped(rdn, '+');
            let after_plus = attributes.len() > 1;
            attributes
                .into_iter()
                .map(|attribute| read_attribute(attribute, after_plus))
                .collect()
        })
        .collect()
}

/// `in_multi_valued`: the text came from an RDN with an unescaped `+`, which may have been
/// meant as part of a value.
fn read_attribute(text: &str, in_multi_valued: bool) -> Result<Attribute, String> {
    let Some((key, value)) = split_once_unescaped(text, '=') else {
        let hint = if in_multi_valued {
            " (an unescaped '+' starts another attribute of a multi-valued RDN; write a plus \
             sign inside a value as \\+)"
        } else {
            ""
        };
        return Err(format!("component {:?} has no '='{hint}", text.trim()));
    };
    let key = key.trim().to_string();
    let value = value.trim_start_matches(' ');
    let value = match value.strip_prefix('#') {
        Some(hex_der) => {
            AttributeValue::Der(hex::decode(hex_der.trim_end_matches(' ')).map_err(|_| {
                format!("{key}={value} starts with '#' but is not hex; write a literal # as \\#")
            })?)
        }
        None => AttributeValue::Text(unescape_value(value).map_err(|e| format!("{key}: {e}"))?),
    };
    Ok(Attribute { key, value })
}

/// Undoes [`escape_value`]; spaces not escaped at either end are dropped.
fn unescape_value(text: &str) -> Result<String, String> {
    let mut bytes = Vec::with_capacity(text.len());
    // Length of `bytes` up to the last character that must be kept (escaped or not a space).
    let mut keep = 0;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\\' {
            let mut utf8 = [0; 4];
            bytes.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
            if c != ' ' {
                keep = bytes.len();
            }
            continue;
        }
        let Some(next) = chars.next() else {
            return Err("the value ends with a lone '\\'; write a backslash as \\\\".into());
        };
        let pair = chars
            .peek()
            .filter(|_| next.is_ascii_hexdigit())
            .and_then(|low| u8::from_str_radix(&format!("{next}{low}"), 16).ok());
        match pair {
            Some(byte) => {
                chars.next();
                bytes.push(byte);
            }
            None => {
                let mut utf8 = [0; 4];
                bytes.extend_from_slice(next.encode_utf8(&mut utf8).as_bytes());
            }
        }
        keep = bytes.len();
    }
    bytes.truncate(keep);
    String::from_utf8(bytes).map_err(|_| "its \\XX escapes are not UTF-8".to_string())
}

/// Parses `C=GB,O=Example,CN=alice` into RDNs, in the order given, for issuing.
///
/// Order matters: libvirtd's `tls_allowed_dn_list` matches the DN string GnuTLS prints, which
/// follows the order in the certificate. Values are escaped as [`dn_string`] writes them, so
/// `subject_dn` of the certificate issued from `text` gives `text` back when `text` is written
/// that way; `\,`, `\+`, `\=` and other escapes are accepted. A CN is required because it is the
/// name the identity is known by (policies, logs).
///
/// rcgen writes one attribute per RDN and each attribute type once, so multi-valued RDNs (`+`),
/// repeated attributes and `#hex` values are refused rather than issued differently.
pub fn parse_dn(text: &str) -> Result<DistinguishedName, PkiError> {
    let invalid = |reason: String| PkiError::InvalidDn {
        dn: text.to_string(),
        reason,
    };
    if text.trim().is_empty() {
        return Err(invalid("it is empty".into()));
    }
    let mut dn = DistinguishedName::new();
    let mut seen: Vec<DnType> = Vec::new();
    for rdn in read_dn(text).map_err(invalid)? {
        let [attribute] = rdn.as_slice() else {
            return Err(invalid(format!(
                "{} is a multi-valued RDN (an unescaped '+'), which cannot be issued here; write \
                 a plus sign inside a value as \\+",
                rdn.iter()
                    .map(|a| a.key.as_str())
                    .collect::<Vec<_>>()
                    .join("+")
            )));
        };
        let (ty, value) = issuable_attribute(attribute).map_err(invalid)?;
        // rcgen keeps one value per attribute type; a second OU would silently replace the
        // first and the certificate would not say what the operator wrote.
        if seen.contains(&ty) {
            return Err(invalid(format!(
                "{} appears twice; give each attribute once",
                attribute.key.to_ascii_uppercase()
            )));
        }
        seen.push(ty.clone());
        dn.push(ty, value);
    }
    if !seen.contains(&DnType::CommonName) {
        return Err(invalid("it has no CN (the identity's name)".into()));
    }
    Ok(dn)
}

fn issuable_attribute(attribute: &Attribute) -> Result<(DnType, DnValue), String> {
    let key = attribute.key.to_ascii_uppercase();
    let value = match &attribute.value {
        AttributeValue::Text(value) if value.is_empty() => {
            return Err(format!("{key} has an empty value"))
        }
        AttributeValue::Text(value) => value.clone(),
        AttributeValue::Der(_) => {
            return Err(format!(
                "{key}=#... is a hex-encoded value, which cannot be issued here; write the text, \
                 and a literal # at the start as \\#"
            ))
        }
    };
    Ok(match key.as_str() {
        "C" => {
            if value.len() != 2 || !value.chars().all(|c| c.is_ascii_alphabetic()) {
                return Err(format!(
                    "C must be a two-letter country code like GB, not {value:?}"
                ));
            }
            // X.520 wants countryName as a PrintableString; strict peers reject UTF8String.
            let printable = value
                .clone()
                .try_into()
                .map_err(|_| format!("C={value} is not printable"))?;
            (DnType::CountryName, DnValue::PrintableString(printable))
        }
        "ST" => (DnType::StateOrProvinceName, DnValue::Utf8String(value)),
        "L" => (DnType::LocalityName, DnValue::Utf8String(value)),
        "O" => (DnType::OrganizationName, DnValue::Utf8String(value)),
        "OU" => (DnType::OrganizationalUnitName, DnValue::Utf8String(value)),
        "CN" => (DnType::CommonName, DnValue::Utf8String(value)),
        other => {
            return Err(format!(
                "unknown attribute {other:?}; supported: {}",
                SUPPORTED_ATTRIBUTES.join(", ")
            ))
        }
    })
}

/// The RDN of a DN string that holds its CN, as written (`CN=alice`), for short messages; the
/// whole string when it has none. Escaped commas do not split it.
pub fn common_name_part(dn: &str) -> &str {
    split_unescaped(dn, ',')
        .into_iter()
        .find(|rdn| {
            split_unescaped(rdn, '+')
                .iter()
                .any(|attribute| attribute.trim_start().starts_with("CN="))
        })
        .map_or(dn, str::trim)
}

/// `text` split at every `sep` not escaped with `\`; escapes are kept.
fn split_unescaped(text: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == sep {
            parts.push(&text[start..i]);
            start = i + c.len_utf8();
        }
    }
    parts.push(&text[start..]);
    parts
}

fn split_once_unescaped(text: &str, sep: char) -> Option<(&str, &str)> {
    let mut parts = split_unescaped(text, sep).into_iter();
    let first = parts.next()?;
    parts.next()?;
    Some((first, &text[first.len() + sep.len_utf8()..]))
}

#[cfg(test)]
mod tests;
