//! Benchmark helper: one mDNS responder announcing N libvirt hosts
//! (`Virtualization Host <prefix>-<i>` on `<prefix>-<i>.local.`), all with the given addresses.
//! Used by `bench/inventory.sh`; run it only inside a network namespace.
//!
//! `advertise_many PREFIX COUNT PORT ADDRESS...`

use std::net::IpAddr;
use std::time::Duration;

use mdns_sd::{ServiceDaemon, ServiceInfo};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [prefix, count, port, addresses @ ..] = args.as_slice() else {
        eprintln!("usage: advertise_many PREFIX COUNT PORT ADDRESS...");
        std::process::exit(2);
    };
    let count: usize = count.parse().expect("COUNT is a number");
    let port: u16 = port.parse().expect("PORT is a number");
    let addresses: Vec<IpAddr> = addresses
        .iter()
        .map(|a| a.parse().expect("an IP address"))
        .collect();
    let daemon = ServiceDaemon::new().expect("mDNS daemon");
    for i in 0..count {
        let host = format!("{prefix}-{i:04}");
        let txt = [("txtvers", "1"), ("hostname", host.as_str())];
        let info = ServiceInfo::new(
            virtgate_discovery::SERVICE_TYPE,
            &virtgate_discovery::instance_name_for(&host),
            &format!("{host}.local."),
            &addresses[..],
            port,
            &txt[..],
        )
        .expect("valid service");
        // The daemon's command queue holds 100 entries: wait and retry when it is full.
        while let Err(mdns_sd::Error::Again) = daemon.register(info.clone()) {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    println!("registered {count}");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
