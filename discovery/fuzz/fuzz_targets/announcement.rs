//! One mDNS announcement as the browser reads it: the full service name, the SRV host name and
//! the TXT record's wire form, whatever their bytes. Checks that `txt_entries` reads the record
//! as documented (an independent RFC 6763 §6 reading below), that what it reads writes back to a
//! record that reads the same, that nothing it returns is bigger than the input, that the
//! instance name round-trips through the escaped full name, and that
//! `HostAdvert::from_announcement` keeps exactly the usable addresses. Nothing may panic.
//!
//! Input: `fullname NUL hostname NUL flags record…`; missing parts are empty. Bit `i` of the
//! `flags` byte announces `ADDRESSES[i]`.
#![no_main]

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use libfuzzer_sys::fuzz_target;
use virtgate_discovery::{instance_from_fullname, txt_entries, HostAdvert, SERVICE_TYPE};

const ADDRESSES: [IpAddr; 8] = [
    IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)),
    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
    IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1)),
    IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)),
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
    IpAddr::V6(Ipv6Addr::new(0xfebf, 0, 0, 0, 0, 0, 0, 1)),
    IpAddr::V6(Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 1)),
    IpAddr::V6(Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0xc000, 0x0207)),
];

fuzz_target!(|data: &[u8]| {
    let (fullname, rest) = split_nul(data);
    let (hostname, rest) = split_nul(rest);
    let (flags, record) = rest.split_first().map_or((0, &[][..]), |(f, r)| (*f, r));
    // mdns-sd hands names over as Strings.
    let fullname = String::from_utf8_lossy(fullname);
    let hostname = String::from_utf8_lossy(hostname);

    // --- TXT ---------------------------------------------------------------------------------
    let txt = txt_entries(record);
    assert_eq!(txt, rfc6763_reading(record), "record {record:02x?}");
    // Bounded by the input: every key and value is a piece of one string of the record, and
    // every entry used at least a length byte and one byte of string.
    let size: usize = txt.iter().map(|(k, v)| k.len() + v.len()).sum();
    assert!(size <= record.len());
    assert!(txt.len() * 2 <= record.len());
    // What was read writes back as `key=value` strings that read the same, where each fits
    // the 255 bytes a string can hold.
    let strings: Vec<String> = txt.iter().map(|(k, v)| format!("{k}={v}")).collect();
    if strings.iter().all(|s| s.len() <= 255) {
        let written: Vec<u8> = strings
            .iter()
            .flat_map(|s| [&[s.len() as u8][..], s.as_bytes()].concat())
            .collect();
        assert_eq!(txt_entries(&written), txt, "written back as {written:02x?}");
    }

    // --- instance name -----------------------------------------------------------------------
    let instance = instance_from_fullname(&fullname);
    assert!(instance.len() <= fullname.len());
    // Any instance, its dots and backslashes escaped as an advertiser writes them, reads back.
    let mut escaped = String::new();
    for c in instance.chars() {
        if c == '.' || c == '\\' {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    assert_eq!(
        instance_from_fullname(&format!("{escaped}.{SERVICE_TYPE}")),
        instance
    );

    // --- the advert --------------------------------------------------------------------------
    let announced: Vec<IpAddr> = ADDRESSES
        .iter()
        .enumerate()
        .filter(|(i, _)| flags >> i & 1 == 1)
        .map(|(_, ip)| *ip)
        .collect();
    let mut usable: Vec<IpAddr> = announced
        .iter()
        .copied()
        .filter(|ip| !matches!(ip, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80))
        .collect();
    usable.sort_by_key(|ip| (ip.is_ipv6(), *ip));
    usable.dedup();
    match HostAdvert::from_announcement(&fullname, &hostname, 16514, announced, txt.clone()) {
        None => assert!(instance.is_empty() || usable.is_empty()),
        Some(advert) => {
            assert_eq!(advert.instance, instance);
            assert!(!advert.instance.is_empty());
            assert_eq!(advert.fullname, fullname);
            assert_eq!(advert.hostname, hostname);
            assert_eq!(advert.port, 16514);
            assert_eq!(advert.addresses, usable);
            assert_eq!(advert.txt, txt);
            let short = advert.short_hostname();
            assert!(hostname.starts_with(short), "{short:?} of {hostname:?}");
        }
    }
});

fn split_nul(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}

/// RFC 6763 §6 as `txt_entries` documents it, written independently: length-prefixed strings
/// up to a zero length or one that runs past the end; the key before the first `=`; keys that
/// are not UTF-8 skipped; the first of keys equal but for case kept; a bare key or a value that
/// is not UTF-8 read as "".
fn rfc6763_reading(record: &[u8]) -> BTreeMap<String, String> {
    let mut entries = BTreeMap::new();
    let mut seen = HashSet::new();
    let mut rest = record;
    while let Some((&len, tail)) = rest.split_first() {
        let len = usize::from(len);
        if len == 0 || len > tail.len() {
            break;
        }
        let (string, tail) = tail.split_at(len);
        rest = tail;
        let (key, value) = match string.iter().position(|&b| b == b'=') {
            Some(i) => (&string[..i], Some(&string[i + 1..])),
            None => (string, None),
        };
        let Ok(key) = std::str::from_utf8(key) else {
            continue;
        };
        if !seen.insert(key.to_lowercase()) {
            continue;
        }
        let value = value
            .and_then(|v| std::str::from_utf8(v).ok())
            .unwrap_or("");
        entries.insert(key.to_string(), value.to_string());
    }
    entries
}
