//! Reading one resolved announcement into a [`HostAdvert`]: the instance name from the full
//! service name, the addresses worth reporting, and the TXT entries. Pure, so it can be specified
//! and fuzzed without a network (`discovery/fuzz`).

use std::collections::BTreeMap;
use std::net::IpAddr;

use mdns_sd::TxtProperties;

use crate::interfaces::{is_ipv6_link_local, sort_addresses};
use crate::names::instance_from_fullname;
use crate::HostAdvert;

impl HostAdvert {
    /// What one resolved announcement says, or `None` when it names no instance or leaves no
    /// usable address (IPv6 link-local addresses are dropped; the rest are sorted IPv4 first,
    /// without duplicates). Nothing is checked against anything: every field is a claim.
    pub fn from_announcement(
        fullname: &str,
        hostname: &str,
        port: u16,
        addresses: impl IntoIterator<Item = IpAddr>,
        txt: BTreeMap<String, String>,
    ) -> Option<Self> {
        let instance = instance_from_fullname(fullname);
        let mut addresses: Vec<IpAddr> = addresses
            .into_iter()
            .filter(|ip| !is_ipv6_link_local(ip))
            .collect();
        sort_addresses(&mut addresses);
        if instance.is_empty() || addresses.is_empty() {
            return None;
        }
        Some(Self {
            instance,
            fullname: fullname.to_string(),
            hostname: hostname.to_string(),
            port,
            addresses,
            txt,
        })
    }
}

/// The TXT entries of an announcement, from the record's wire form (RFC 6763 §6: strings, each
/// after a length byte, of `key=value` or a bare `key`), read exactly as the browser reads them:
/// mdns-sd decodes the record, and [`txt_map`] turns its properties into [`HostAdvert::txt`].
///
/// The key is everything before the first `=`. A key that is not UTF-8 is skipped; of keys that
/// differ only in case the first is kept. A bare key, and a value that is not UTF-8, read as `""`.
/// A zero length byte, or a length that runs past the record, ends it.
pub fn txt_entries(record: &[u8]) -> BTreeMap<String, String> {
    txt_map(&TxtProperties::from(record))
}

/// The TXT properties mdns-sd decoded, as [`HostAdvert::txt`] holds them.
pub(crate) fn txt_map(properties: &TxtProperties) -> BTreeMap<String, String> {
    properties
        .iter()
        .map(|p| (p.key().to_string(), p.val_str().to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TXT record from its strings, each after its length byte.
    fn record(strings: &[&[u8]]) -> Vec<u8> {
        strings
            .iter()
            .flat_map(|s| [&[s.len() as u8][..], s].concat())
            .collect()
    }

    fn map(entries: &[(&str, &str)]) -> BTreeMap<String, String> {
        entries
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn txt_entries_are_key_value_strings_split_at_the_first_equals_sign() {
        let txt = record(&[b"txtvers=1", b"uri=qemu+tls://h1/system?a=b", b"auth=tls"]);
        assert_eq!(
            txt_entries(&txt),
            map(&[
                ("txtvers", "1"),
                ("uri", "qemu+tls://h1/system?a=b"),
                ("auth", "tls"),
            ])
        );
    }

    #[test]
    fn bare_keys_and_values_that_are_not_utf8_read_as_empty() {
        let txt = record(&[b"flag", b"bin=\xff\xfe", b"empty="]);
        assert_eq!(
            txt_entries(&txt),
            map(&[("flag", ""), ("bin", ""), ("empty", "")])
        );
    }

    #[test]
    fn of_keys_differing_only_in_case_the_first_is_kept_and_bad_keys_are_skipped() {
        let txt = record(&[b"Auth=tls", b"auth=none", b"\xff=x", b"hostname=h1"]);
        assert_eq!(
            txt_entries(&txt),
            map(&[("Auth", "tls"), ("hostname", "h1")])
        );
    }

    #[test]
    fn a_zero_length_or_a_length_past_the_end_ends_the_record() {
        let mut txt = record(&[b"a=1", b"", b"b=2"]);
        assert_eq!(txt_entries(&txt), map(&[("a", "1")]));
        txt = record(&[b"a=1"]);
        txt.extend([9, b'b', b'=']);
        assert_eq!(txt_entries(&txt), map(&[("a", "1")]));
        assert_eq!(txt_entries(&[]), map(&[]));
    }

    #[test]
    fn an_announcement_reads_as_its_instance_addresses_and_txt() {
        let advert = HostAdvert::from_announcement(
            r"Virtualization Host h1\.lab._libvirt._tcp.local.",
            "h1.local.",
            16514,
            [
                ip("fe80::1"),
                ip("2001:db8::1"),
                ip("192.0.2.7"),
                ip("192.0.2.7"),
            ],
            map(&[("txtvers", "1")]),
        )
        .unwrap();
        assert_eq!(advert.instance, "Virtualization Host h1.lab");
        assert_eq!(
            advert.fullname,
            r"Virtualization Host h1\.lab._libvirt._tcp.local."
        );
        assert_eq!(advert.short_hostname(), "h1");
        assert_eq!(advert.port, 16514);
        assert_eq!(
            advert.addresses,
            [ip("192.0.2.7"), ip("2001:db8::1")],
            "IPv4 first, link-local and duplicates left out"
        );
        assert_eq!(advert.txt, map(&[("txtvers", "1")]));
    }

    #[test]
    fn an_announcement_without_an_instance_or_a_usable_address_is_ignored() {
        let none = |fullname: &str, addresses: &[&str]| {
            HostAdvert::from_announcement(
                fullname,
                "h1.local.",
                16514,
                addresses.iter().map(|a| ip(a)),
                BTreeMap::new(),
            )
        };
        assert_eq!(none("._libvirt._tcp.local.", &["192.0.2.7"]), None);
        assert_eq!(none("", &["192.0.2.7"]), None);
        assert_eq!(
            none("Virtualization Host h1._libvirt._tcp.local.", &[]),
            None
        );
        assert_eq!(
            none("Virtualization Host h1._libvirt._tcp.local.", &["fe80::1"]),
            None
        );
    }
}
