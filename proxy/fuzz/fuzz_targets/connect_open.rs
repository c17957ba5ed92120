//! A CONNECT_OPEN payload from an untrusted client: decoded, then its name canonicalised the way
//! the gateway decides what the host will open. Whatever passes must be minimal and stable:
//! an allowed driver, no authority, transport, fragment or unlisted parameter, and the same
//! result when canonicalised again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use virtgate_proxy::{canonical, UriRules};
use virtgate_rpc::remote::ConnectOpenArgs;
use virtgate_rpc::{Reader, Xdr};

fn rules() -> UriRules {
    UriRules {
        drivers: ["qemu", "test", "lxc", "xen", "network"].map(String::from).to_vec(),
        test_paths: vec!["/default".into()],
        parameters: vec!["mode".into()],
    }
}

fuzz_target!(|data: &[u8]| {
    // Either a whole CONNECT_OPEN payload, or (when it does not decode) the bytes as a name.
    let name = match ConnectOpenArgs::decode(&mut Reader::new(data)) {
        Ok(args) => args.name.unwrap_or_default(),
        Err(_) => String::from_utf8_lossy(data).into_owned(),
    };
    let rules = rules();
    let Ok(route) = canonical(&name, &rules) else {
        return;
    };
    let forwarded = &route.forwarded;
    let (driver, rest) = forwarded.split_once(":///").expect("DRIVER:///PATH");
    assert!(rules.drivers.iter().any(|d| d == driver), "{forwarded}");
    assert!(!driver.contains('+'), "no transport: {forwarded}");
    assert!(!forwarded.contains('#'), "no fragment: {forwarded}");
    let path = rest.split('?').next().unwrap_or_default();
    if driver == "test" {
        assert_eq!(path, "default", "{forwarded}");
    }
    if let Some((_, query)) = rest.split_once('?') {
        for parameter in query.split('&') {
            let key = parameter.split('=').next().unwrap_or_default();
            assert_eq!(key, "mode", "only allowed parameters: {forwarded}");
        }
    }
    if let Some(host) = &route.host {
        assert_eq!(host, &host.to_ascii_lowercase());
    }
    let again = canonical(forwarded, &rules).expect("the forwarded name passes again");
    assert_eq!(&again.forwarded, forwarded, "canonical is stable");
    assert_eq!(again.host, None, "the forwarded name names no host");
});
