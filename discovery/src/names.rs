//! Instance and host names on the wire.

use crate::SERVICE_TYPE;

/// The instance-name prefix libvirt has always used for its hosts.
pub const INSTANCE_PREFIX: &str = "Virtualization Host ";

/// A DNS label holds at most 63 bytes; mdns-sd silently drops records with a longer instance
/// label (register() still returns Ok), so longer names must be cut before registering.
pub const MAX_LABEL_BYTES: usize = 63;

/// `Virtualization Host <host>`, cut at a UTF-8 boundary so the label stays within 63 bytes.
pub fn instance_name_for(host: &str) -> String {
    let mut name = format!("{INSTANCE_PREFIX}{host}");
    if name.len() > MAX_LABEL_BYTES {
        let mut cut = MAX_LABEL_BYTES;
        while !name.is_char_boundary(cut) {
            cut -= 1;
        }
        name.truncate(cut);
    }
    name
}

/// The instance part of a full service name. Instance names may contain dots
/// (`Virtualization Host h1.example.com`), so the service suffix is stripped instead of
/// splitting on dots. Advertisers see escaped dots (`\.`), browsers unescaped ones: both work.
pub fn instance_from_fullname(fullname: &str) -> String {
    let instance = fullname
        .strip_suffix(SERVICE_TYPE)
        .and_then(|s| s.strip_suffix('.'))
        .unwrap_or(fullname);
    unescape(instance)
}

fn unescape(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut chars = name.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                out.push(next);
                continue;
            }
        }
        out.push(c);
    }
    out
}

/// The host-name label we announce as `<label>.local.`: the short host name, lower case.
pub(crate) fn host_label(hostname: &str) -> Option<String> {
    let short = hostname
        .split('.')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    let ok = !short.is_empty()
        && short.len() <= MAX_LABEL_BYTES
        && short.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !short.starts_with('-')
        && !short.ends_with('-');
    ok.then_some(short)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_name_uses_libvirts_historical_prefix() {
        assert_eq!(instance_name_for("h1"), "Virtualization Host h1");
    }

    #[test]
    fn instance_name_is_cut_to_one_dns_label_on_a_char_boundary() {
        let long = "ü".repeat(40); // 80 bytes
        let name = instance_name_for(&long);
        assert!(name.len() <= MAX_LABEL_BYTES, "{} bytes", name.len());
        assert!(name.starts_with(INSTANCE_PREFIX));
        assert_eq!(name.len(), 62, "20 prefix bytes + 21 two-byte chars");
    }

    #[test]
    fn instance_is_taken_by_stripping_the_suffix_not_by_splitting_dots() {
        assert_eq!(
            instance_from_fullname("Virtualization Host h1.example.com._libvirt._tcp.local."),
            "Virtualization Host h1.example.com"
        );
        assert_eq!(
            instance_from_fullname(r"Virtualization Host h1\.example\.com._libvirt._tcp.local."),
            "Virtualization Host h1.example.com"
        );
    }

    #[test]
    fn host_label_is_the_short_lowercase_name() {
        assert_eq!(host_label("H1.example.com").as_deref(), Some("h1"));
        assert_eq!(host_label("bad_name"), None);
        assert_eq!(host_label(""), None);
    }
}
