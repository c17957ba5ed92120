//! Arbitrary bytes as a stream of packets, scanned the way the relay scans its buffer:
//! `declared_len` → `Header::parse` → the typed message the header names → re-encode → decode
//! again must agree. Nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use virtgate_rpc::{
    declared_len, packet, procedure_label, program_name, Header, Packet, Procedure, Program,
    HEADER_LEN,
};

mod common;

fuzz_target!(|data: &[u8]| {
    // Whatever the bytes, parsing them whole must not panic.
    let _ = Header::parse(data);
    let _ = Packet::parse(data);

    let mut at = 0;
    while let Some(Ok(len)) = declared_len(&data[at..]) {
        let len = len as usize;
        if data.len() - at < len {
            break;
        }
        let bytes = &data[at..at + len];
        at += len;
        let header = Header::parse(bytes).expect("a validated length covers the header");
        let p = Packet::parse(bytes).expect("a slice of its declared length is a packet");
        assert_eq!(p.header, header);
        assert_eq!(p.payload, &bytes[HEADER_LEN..]);

        // The header re-encodes to the same bytes (unknown numbers are preserved).
        let mut head = Vec::new();
        header.write(&mut head);
        assert_eq!(head, &bytes[..HEADER_LEN]);

        // Labels are bounded: a known name, "other", or a program's fixed name.
        let label = procedure_label(header.program, header.procedure);
        if header.program == Program::Remote {
            let name = Procedure(header.procedure).name();
            assert_eq!(label, name.unwrap_or("other"));
        }
        let _ = program_name(header.program);
        let _ = Procedure(header.procedure).read_only();

        // The typed payload round-trips, and rebuilds into a packet that parses alike.
        if let Some(payload) = common::message_for(&header, p.payload) {
            let rebuilt = packet(header, &payload);
            let q = Packet::parse(&rebuilt).expect("a rebuilt packet parses");
            assert_eq!(q.header.len as usize, rebuilt.len());
            assert_eq!(
                Header {
                    len: header.len,
                    ..q.header
                },
                header
            );
            assert_eq!(common::message_for(&q.header, q.payload), Some(payload));
        }
    }
});
