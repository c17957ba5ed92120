//! The namespace lab itself: idempotent bring-up, IPv4 + IPv6 between nodes, the virbr0 helper
//! and complete teardown.
#![allow(clippy::disallowed_types)] // synchronous test code: std's clock is the right one

use std::process::Command;
use std::time::{Duration, Instant};

use virtgate_testlab::netns::{list_namespaces, netns_pids, Lab, Node};
use virtgate_testlab::{require_root_and_tools, LabProcess};

const TOOLS: &[&str] = &["ip", "sysctl", "/usr/bin/python3"];

/// A TCP server in `node` that greets every client with the client's address, so the client
/// side proves both reachability and which source address was used.
fn greeter(node: &Node, port: u16) -> LabProcess {
    let script = format!(
        "import socket\n\
         s = socket.socket(socket.AF_INET6)\n\
         s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)\n\
         s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         s.bind(('::', {port}))\n\
         s.listen()\n\
         print('ready', flush=True)\n\
         while True:\n\
         \x20   c, a = s.accept()\n\
         \x20   c.sendall(('hello ' + a[0] + '\\n').encode())\n\
         \x20   c.close()\n"
    );
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.args(["-c", &script]);
    let p = node.spawn(cmd).expect("spawn greeter");
    p.wait_for_line(Duration::from_secs(5), |l| l == "ready")
        .expect("greeter ready");
    p
}

/// Connects from `node` to `addr`:`port` and returns what the server said.
fn connect_from(node: &Node, addr: &str, port: u16) -> String {
    let script = format!(
        "import socket\n\
         c = socket.create_connection(('{addr}', {port}), timeout=3)\n\
         print(c.recv(200).decode().strip())\n"
    );
    let out = node
        .command("/usr/bin/python3")
        .args(["-c", &script])
        .output()
        .expect("run client");
    assert!(
        out.status.success(),
        "client in {} → {addr}:{port} failed: {}",
        node.ns,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn eth0_state(node: &Node) -> String {
    let out = node
        .command("ip")
        .args(["-br", "addr", "show", "dev", "eth0"])
        .output()
        .expect("ip addr");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn lab_namespaces(prefix: &str) -> Vec<String> {
    list_namespaces()
        .expect("ip netns list")
        .into_iter()
        .filter(|n| n.starts_with(&format!("{prefix}-")))
        .collect()
}

#[test]
fn up_is_idempotent_and_nodes_talk_over_ipv4_and_ipv6() {
    require_root_and_tools(TOOLS);
    let prefix = "vgl-nl1";
    let nodes = [("h1", 11), ("h2", 12)];
    let t = Instant::now();
    let lab = Lab::fresh(prefix, &nodes).expect("lab up");
    eprintln!("lab up took {:?}", t.elapsed());
    let (h1, h2) = (lab.node("h1").clone(), lab.node("h2").clone());
    assert_eq!(h1.ipv4.to_string(), "10.250.0.11");
    assert_eq!(h2.ipv6.to_string(), "fd00:250::12");
    let before = (eth0_state(&h1), eth0_state(&h2));
    assert!(before.0.contains("10.250.0.11/24") && before.0.contains("fd00:250::11/64"));

    // A second up over the running lab changes nothing and keeps it working.
    let t = Instant::now();
    let again = Lab::up(prefix, &nodes).expect("second up");
    eprintln!("second up took {:?}", t.elapsed());
    assert_eq!((eth0_state(&h1), eth0_state(&h2)), before);
    let mut namespaces = lab_namespaces(prefix);
    namespaces.sort();
    assert_eq!(namespaces, ["vgl-nl1-h1", "vgl-nl1-h2", "vgl-nl1-sw"]);

    let _server = greeter(&h2, 7001);
    assert_eq!(
        connect_from(&h1, &h2.ipv4.to_string(), 7001),
        "hello ::ffff:10.250.0.11"
    );
    assert_eq!(
        connect_from(&h1, &h2.ipv6.to_string(), 7001),
        "hello fd00:250::11"
    );
    drop(again);
    // `again` tore the lab down; dropping the first handle must be a harmless no-op.
    drop(lab);
    assert!(lab_namespaces(prefix).is_empty());
}

#[test]
fn up_recreates_a_missing_node() {
    require_root_and_tools(TOOLS);
    let prefix = "vgl-nl2";
    let nodes = [("a", 21), ("b", 22)];
    let lab = Lab::fresh(prefix, &nodes).expect("lab up");
    let status = Command::new("ip")
        .args(["netns", "del", &lab.node("b").ns])
        .status()
        .unwrap();
    assert!(status.success());
    let lab = Lab::up(prefix, &nodes).expect("up repairs the lab");
    let _server = greeter(lab.node("b"), 7002);
    assert_eq!(
        connect_from(lab.node("a"), "fd00:250::22", 7002),
        "hello fd00:250::21"
    );
}

#[test]
fn bridge_interface_helper_makes_an_up_virbr0() {
    require_root_and_tools(TOOLS);
    let lab = Lab::fresh("vgl-nl3", &[("h1", 11)]).expect("lab up");
    let h1 = lab.node("h1");
    h1.add_bridge_interface("virbr0", &["192.168.122.1/24", "fd00:122::1/64"])
        .expect("add virbr0");
    // Idempotent, like the lab.
    h1.add_bridge_interface("virbr0", &["192.168.122.1/24", "fd00:122::1/64"])
        .expect("add virbr0 again");
    let out = h1
        .command("ip")
        .args(["-br", "addr", "show", "dev", "virbr0"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("virbr0 ") && text.contains(" UP "),
        "{text}"
    );
    assert!(text.contains("192.168.122.1/24"), "{text}");
    assert!(text.contains("fd00:122::1/64"), "{text}");
    assert_eq!(text.matches("192.168.122.1/24").count(), 1, "{text}");
}

#[test]
fn drop_removes_namespaces_and_kills_their_processes() {
    require_root_and_tools(TOOLS);
    let prefix = "vgl-nl4";
    let lab = Lab::fresh(prefix, &[("h1", 11), ("h2", 12)]).expect("lab up");
    let mut server = greeter(lab.node("h1"), 7004);
    // A process the lab knows nothing about: it must die too.
    let mut stray = lab
        .node("h2")
        .command("sleep")
        .arg("300")
        .spawn()
        .expect("spawn sleep");
    let h2_ns = lab.node("h2").ns.clone();
    let deadline = Instant::now() + Duration::from_secs(2);
    while !netns_pids(&h2_ns).contains(&stray.id()) {
        assert!(
            Instant::now() < deadline,
            "sleep never showed up in {h2_ns}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let t = Instant::now();
    drop(lab);
    eprintln!("teardown took {:?}", t.elapsed());
    assert!(lab_namespaces(prefix).is_empty());
    assert!(
        server.wait_timeout(Duration::from_secs(1)).is_some(),
        "greeter survived the teardown"
    );
    let status = stray.wait().expect("wait sleep");
    assert!(!status.success(), "sleep should have been killed: {status}");
    // Down on a lab that is already gone is fine.
    Lab::down(prefix).expect("second down");
}
