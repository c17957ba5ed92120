//! Subject DNs written as `C=GB,O=Example,CN=alice`.

use rcgen::{DistinguishedName, DnType, DnValue};

use crate::PkiError;

/// The attributes a DN may use, in the spelling the parser accepts.
pub const SUPPORTED_ATTRIBUTES: [&str; 6] = ["C", "ST", "L", "O", "OU", "CN"];

/// Parses `C=GB,O=Example,CN=alice` into RDNs, in the order given.
///
/// Order matters: libvirtd's `tls_allowed_dn_list` matches the DN string GnuTLS prints, which
/// follows the order in the certificate. A `,` or `=` inside a value is written `\,` / `\=`.
/// A CN is required because it is the name the identity is known by (policies, logs).
pub fn parse_dn(text: &str) -> Result<DistinguishedName, PkiError> {
    let invalid = |reason: String| PkiError::InvalidDn {
        dn: text.to_string(),
        reason,
    };
    let mut dn = DistinguishedName::new();
    let mut seen: Vec<DnType> = Vec::new();
    let parts = split_unescaped(text);
    if parts.iter().all(|p| p.trim().is_empty()) {
        return Err(invalid("it is empty".into()));
    }
    for part in parts {
        let part = part.trim();
        if part.is_empty() {
            return Err(invalid(
                "it has an empty component (two commas in a row?)".into(),
            ));
        }
        let Some((key, value)) = split_once_unescaped(part, '=') else {
            return Err(invalid(format!("component {part:?} has no '='")));
        };
        let key = key.trim().to_ascii_uppercase();
        let value = unescape(value.trim());
        if value.is_empty() {
            return Err(invalid(format!("{key} has an empty value")));
        }
        let (ty, value) = match key.as_str() {
            "C" => {
                if value.len() != 2 || !value.chars().all(|c| c.is_ascii_alphabetic()) {
                    return Err(invalid(format!(
                        "C must be a two-letter country code like GB, not {value:?}"
                    )));
                }
                // X.520 wants countryName as a PrintableString; strict peers reject UTF8String.
                let printable = value
                    .clone()
                    .try_into()
                    .map_err(|_| invalid(format!("C={value} is not printable")))?;
                (DnType::CountryName, DnValue::PrintableString(printable))
            }
            "ST" => (DnType::StateOrProvinceName, DnValue::Utf8String(value)),
            "L" => (DnType::LocalityName, DnValue::Utf8String(value)),
            "O" => (DnType::OrganizationName, DnValue::Utf8String(value)),
            "OU" => (DnType::OrganizationalUnitName, DnValue::Utf8String(value)),
            "CN" => (DnType::CommonName, DnValue::Utf8String(value)),
            other => {
                return Err(invalid(format!(
                    "unknown attribute {other:?}; supported: {}",
                    SUPPORTED_ATTRIBUTES.join(", ")
                )))
            }
        };
        // rcgen keeps one value per attribute type; a second OU would silently replace the
        // first and the certificate would not say what the operator wrote.
        if seen.contains(&ty) {
            return Err(invalid(format!(
                "{key} appears twice; give each attribute once"
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

fn split_unescaped(text: &str) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut escaped = false;
    for c in text.chars() {
        if escaped {
            parts.last_mut().expect("never empty").extend(['\\', c]);
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == ',' {
            parts.push(String::new());
        } else {
            parts.last_mut().expect("never empty").push(c);
        }
    }
    if escaped {
        parts.last_mut().expect("never empty").push('\\');
    }
    parts
}

fn split_once_unescaped(text: &str, sep: char) -> Option<(&str, &str)> {
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == sep {
            return Some((&text[..i], &text[i + c.len_utf8()..]));
        }
    }
    None
}

fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            out.extend(chars.next());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(text: &str) -> Vec<(DnType, String)> {
        parse_dn(text)
            .unwrap()
            .iter()
            .map(|(t, v)| {
                let v = match v {
                    DnValue::Utf8String(s) => s.clone(),
                    DnValue::PrintableString(s) => s.as_str().to_string(),
                    other => panic!("unexpected value type {other:?}"),
                };
                (t.clone(), v)
            })
            .collect()
    }

    #[test]
    fn keeps_every_supported_attribute_in_the_order_given() {
        assert_eq!(
            entries("C=GB, ST=London,L=Camden,O=Example,OU=Ops,CN=alice"),
            vec![
                (DnType::CountryName, "GB".into()),
                (DnType::StateOrProvinceName, "London".into()),
                (DnType::LocalityName, "Camden".into()),
                (DnType::OrganizationName, "Example".into()),
                (DnType::OrganizationalUnitName, "Ops".into()),
                (DnType::CommonName, "alice".into()),
            ]
        );
        assert_eq!(
            entries("cn=bob,o=Example"),
            vec![
                (DnType::CommonName, "bob".into()),
                (DnType::OrganizationName, "Example".into()),
            ],
            "attribute names are case-insensitive; order is the caller's"
        );
    }

    #[test]
    fn escaped_commas_and_equals_signs_stay_in_the_value() {
        assert_eq!(
            entries(r"O=Example\, Inc.,CN=a\=b"),
            vec![
                (DnType::OrganizationName, "Example, Inc.".into()),
                (DnType::CommonName, "a=b".into()),
            ]
        );
    }

    #[test]
    fn an_unknown_attribute_is_named_in_the_error() {
        let err = parse_dn("O=Example,EMAIL=a@example.com,CN=alice")
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"EMAIL\""), "{err}");
        assert!(err.contains("C, ST, L, O, OU, CN"), "{err}");
    }

    #[test]
    fn malformed_dns_are_refused_with_the_reason() {
        for (dn, why) in [
            ("", "empty"),
            ("O=Example", "no CN"),
            ("CN", "no '='"),
            ("CN=", "empty value"),
            ("O=a,,CN=b", "empty component"),
            ("C=GBR,CN=a", "two-letter"),
            ("OU=a,OU=b,CN=c", "twice"),
        ] {
            let err = parse_dn(dn).unwrap_err().to_string();
            assert!(err.contains(why), "{dn:?}: {err}");
        }
    }
}
