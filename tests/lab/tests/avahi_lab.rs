//! Real avahi-daemons inside lab nodes: a static `_libvirt._tcp` service file in h1 is browsed
//! from h2 (IPv4 and IPv6); services published with avahi-publish in h3 and in h2 itself are
//! seen from h2, and the h3 one disappears after its publisher gets SIGTERM.
#![allow(clippy::disallowed_types)] // synchronous test code: std's clock is the right one

use std::net::IpAddr;
use std::time::{Duration, Instant};

use virtgate_testlab::avahi::{Avahi, AvahiOptions, AvahiRecord, ServiceFile, AVAHI_TOOLS};
use virtgate_testlab::netns::Lab;
use virtgate_testlab::require_root_and_tools;

fn named<'a>(records: &'a [AvahiRecord], name: &str) -> Vec<&'a AvahiRecord> {
    records.iter().filter(|r| r.name == name).collect()
}

fn addresses(records: &[&AvahiRecord]) -> Vec<IpAddr> {
    let mut a: Vec<IpAddr> = records.iter().map(|r| r.address).collect();
    a.sort();
    a.dedup();
    a
}

#[test]
fn static_and_published_services_are_browsed_across_the_lab() {
    require_root_and_tools(AVAHI_TOOLS);
    let lab = Lab::fresh("vgl-av", &[("h1", 11), ("h2", 12), ("h3", 13)]).expect("lab");
    let t0 = Instant::now();

    let mut h1_opts = AvahiOptions::new("avahi-h1");
    h1_opts
        .services
        .push(ServiceFile::libvirt("avahi-h1", 16514));
    let with_bus = |host: &str| AvahiOptions {
        with_dbus: true,
        ..AvahiOptions::new(host)
    };
    // Each daemon spends most of its ~0.8 s start-up probing its host name; start them at once.
    let (_h1, browser, publisher) = std::thread::scope(|s| {
        let h1 = s.spawn(|| Avahi::start(lab.node("h1"), &h1_opts));
        let h2 = s.spawn(|| Avahi::start(lab.node("h2"), &with_bus("avahi-h2")));
        let h3 = s.spawn(|| Avahi::start(lab.node("h3"), &with_bus("avahi-h3")));
        (
            h1.join().unwrap().expect("avahi in h1"),
            h2.join().unwrap().expect("avahi + dbus in h2"),
            h3.join().unwrap().expect("avahi + dbus in h3"),
        )
    });
    eprintln!("three avahi daemons up after {:?}", t0.elapsed());

    let h1_name = "Virtualization Host avahi-h1";
    let want_h1: Vec<IpAddr> = vec![
        "10.250.0.11".parse().unwrap(),
        "fd00:250::11".parse().unwrap(),
    ];
    let t = Instant::now();
    let records = browser
        .browse_until("_libvirt._tcp", Duration::from_secs(15), |r| {
            addresses(&named(r, h1_name)) == want_h1
        })
        .expect("h2 sees h1's static service over IPv4 and IPv6");
    eprintln!("h1 static service browsed after {:?}", t.elapsed());
    for r in named(&records, h1_name) {
        assert_eq!(r.interface, "eth0");
        assert_eq!(r.service_type, "_libvirt._tcp");
        assert_eq!(r.domain, "local");
        assert_eq!(r.host_name, "avahi-h1.local");
        assert_eq!(r.port, 16514);
        assert_eq!(r.txt_value("uri"), Some("qemu+tls://avahi-h1/system"));
        assert_eq!(r.txt_value("hostname"), Some("avahi-h1"));
        assert_eq!(r.txt_value("version"), Some("1"));
    }

    let published = "Virtualization Host pub h3";
    let own = "Virtualization Host own h2";
    let t = Instant::now();
    // Publishing waits for avahi's name probe (~0.8 s); do both at once.
    let (mut advert, _own_advert) = std::thread::scope(|s| {
        let remote = s.spawn(|| {
            publisher.publish(
                published,
                "_libvirt._tcp",
                16600,
                &["hostname=h3", "uri=qemu+tls://h3/system"],
            )
        });
        let local = s.spawn(|| browser.publish(own, "_libvirt._tcp", 16601, &["version=1"]));
        (
            remote.join().unwrap().expect("avahi-publish in h3"),
            local.join().unwrap().expect("avahi-publish in h2"),
        )
    });
    eprintln!("published after {:?}", t.elapsed());
    let t = Instant::now();
    let records = browser
        .browse_until("_libvirt._tcp", Duration::from_secs(15), |r| {
            !named(r, published).is_empty()
                && !named(r, own).is_empty()
                && !named(r, h1_name).is_empty()
        })
        .expect("h2 sees the service published in h3 and its own");
    eprintln!("published services browsed after {:?}", t.elapsed());
    let pubs = named(&records, published);
    assert!(pubs
        .iter()
        .all(|r| r.port == 16600 && r.host_name == "avahi-h3.local"));
    assert!(pubs
        .iter()
        .all(|r| r.txt_value("uri") == Some("qemu+tls://h3/system")));
    assert!(addresses(&pubs).contains(&"10.250.0.13".parse().unwrap()));
    let own_records = named(&records, own);
    assert!(own_records
        .iter()
        .all(|r| r.port == 16601 && r.host_name == "avahi-h2.local"));
    assert!(addresses(&own_records).contains(&"10.250.0.12".parse().unwrap()));

    // SIGTERM makes avahi-publish withdraw the service (avahi sends goodbyes).
    advert.terminate();
    let t = Instant::now();
    browser
        .browse_until("_libvirt._tcp", Duration::from_secs(10), |r| {
            named(r, published).is_empty() && !named(r, h1_name).is_empty()
        })
        .expect("withdrawn service disappears");
    eprintln!("withdrawal seen after {:?}", t.elapsed());
}

#[test]
fn browse_without_dbus_is_an_error() {
    require_root_and_tools(AVAHI_TOOLS);
    let lab = Lab::fresh("vgl-av2", &[("h1", 11)]).expect("lab");
    let avahi = Avahi::start(lab.node("h1"), &AvahiOptions::new("solo")).expect("avahi");
    let err = avahi.browse_once("_libvirt._tcp").unwrap_err();
    assert!(err.to_string().contains("without D-Bus"), "{err}");
    assert!(avahi.log_text().contains("Server startup complete"));
}
