//! SCRAM messages from an untrusted peer, both roles: bytes read as a client-first message (the
//! gateway as the server of a front-door login, then the client-final message after it), and as
//! a server-first and server-final message (the gateway as the client of a host). Splits the
//! input at the first 0xff byte: before it the first message, after it the final one. Nothing may
//! panic; whatever a parser accepts must be bounded; a login the gateway's server accepts must
//! prove the password.
#![no_main]

use libfuzzer_sys::fuzz_target;
use virtgate_proxy::auth::scram::{
    ClientExchange, ClientFirst, ServerExchange, ServerFirst, MAX_MESSAGE, MAX_USER,
};
use virtgate_proxy::auth::{ClientSecret, Mechanism, Salted, Verifier};

/// Few iterations: the fuzzer's time goes to the parsers, not to PBKDF2.
const ITERATIONS: u32 = 2;
const SALT: &[u8] = b"fuzz salt";

fn verifier(m: Mechanism) -> Verifier {
    Verifier::from_password(m, "pencil", SALT, ITERATIONS).expect("a printable password")
}

fuzz_target!(|data: &[u8]| {
    let (first, last) = match data.iter().position(|b| *b == 0xff) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    for m in Mechanism::ALL {
        // The gateway as the server.
        if let Ok(client_first) = ClientFirst::parse(first) {
            assert!(first.len() <= MAX_MESSAGE);
            assert!(client_first.user.len() <= MAX_USER);
            let (exchange, server_first) =
                ServerExchange::start(&client_first, verifier(m), "servernonce");
            assert!(ServerFirst::parse(&server_first).is_ok(), "its own answer reads back");
            if exchange.finish(last).is_ok() {
                // Only a proof made from the password passes; the fuzzer cannot forge one, so
                // this is a message it copied from nowhere: fail loudly.
                panic!("a client-final message from the fuzzer passed the proof check");
            }
        }
        // The gateway as the client of a host.
        let _ = ServerFirst::parse(first);
        let (client, _) = ClientExchange::start(m, "nova", "clientnonce");
        let secret = ClientSecret {
            password: None,
            salted: vec![Salted {
                mechanism: m,
                iterations: ITERATIONS,
                salt: SALT.to_vec(),
                salted_password: m.salted_password("pencil", SALT, ITERATIONS).unwrap(),
            }],
        };
        if let Ok((awaiting, client_final)) = client.respond(first, &secret) {
            assert!(client_final.starts_with(b"c=biws,r=clientnonce"));
            let _ = awaiting.verify(last);
        }
    }
});
