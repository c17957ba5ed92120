//! A raw libvirt client in Python for tests that must send what no ordinary client sends: a
//! prelude (`RAW_CONNECT`: TLS, the 0x01 byte, helpers) and a default open (`RAW_OPEN`).
#![allow(dead_code)] // each test binary uses a part

/// Python prelude of a raw libvirt client: TLS with the identity in `PKI` to `PORT` (receive
/// buffer `RCVBUF` when set) and the 0x01 byte; then `call()` and `read_packet()` (None at end of
/// stream) for the rest of the script, on socket `s`.
pub const RAW_CONNECT: &str = r#"
import os, socket, ssl, struct, time
pki = os.environ["PKI"]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT); ctx.check_hostname = False
ctx.load_verify_locations(pki + "/cacert.pem")
ctx.load_cert_chain(pki + "/clientcert.pem", pki + "/clientkey.pem")
raw = socket.socket()
if os.environ.get("RCVBUF"):
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, int(os.environ["RCVBUF"]))
raw.connect(("127.0.0.1", int(os.environ["PORT"])))
s = ctx.wrap_socket(raw)
assert s.recv(1) == b"\x01"
def call(proc, serial, payload=b"", program=0x20008086):
    return struct.pack(">IIIIIII", 28 + len(payload), program, 1, proc, 0, serial, 0) + payload
def xdr_string(text):
    b = text.encode()
    return struct.pack(">I", len(b)) + b + b"\0" * ((4 - len(b) % 4) % 4)
def open_call(serial, name, flags):
    return call(1, serial, struct.pack(">I", 1) + xdr_string(name) + struct.pack(">I", flags))
def status(packet):
    return struct.unpack(">I", packet[24:28])[0]
def error_text(packet):
    # remote_error: code, domain, then the message as an optional string
    (present,) = struct.unpack(">I", packet[36:40])
    if not present:
        return ""
    (n,) = struct.unpack(">I", packet[40:44])
    return packet[44:44 + n].decode(errors="replace")
def recv_exactly(n):
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data
def read_packet():
    head = recv_exactly(4)
    if head is None:
        return None
    (n,) = struct.unpack(">I", head)
    body = recv_exactly(n - 4)
    return None if body is None else head + body
"#;

/// After `RAW_CONNECT`: AUTH_LIST and CONNECT_OPEN of h1.
pub const RAW_OPEN: &str = r#"
s.sendall(call(66, 0)); read_packet()
name = b"test://h1/default"
s.sendall(call(1, 1, struct.pack(">II", 1, len(name)) + name + b"\0" * ((4 - len(name) % 4) % 4) + struct.pack(">I", 0)))
assert struct.unpack(">I", read_packet()[24:28])[0] == 0, "CONNECT_OPEN ok"
"#;

pub fn raw_client(
    script: &str,
    who: &super::gateway::Identity,
    port: u16,
    rcvbuf: Option<u32>,
) -> std::process::Output {
    let mut cmd = std::process::Command::new("/usr/bin/python3");
    cmd.arg("-c")
        .arg(script)
        .env("PKI", &who.pki)
        .env("PORT", port.to_string());
    if let Some(bytes) = rcvbuf {
        cmd.env("RCVBUF", bytes.to_string());
    }
    cmd.output().unwrap()
}
