//! Every role of the check and of enrollment, fed a peer that says whatever the fuzzer wants:
//! the first byte picks the role, the rest is everything the peer sends (its frames, in one
//! stream). Roles: the agent checking a gateway (relay/rotate), the agent answering a
//! registration (enrollment, rotation), the agent proving its token to a broker, the broker
//! verifying an agent's token, the gateway proving its secret, the broker registering a secret.
//! Nothing panics, and a peer without the secret never passes a check.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use virtgate_pake::driver;
use virtgate_pake::{Binding, Purpose, Record, ServerKeys, Secret, Settings, Token};

struct Fixture {
    rt: tokio::runtime::Runtime,
    keys: ServerKeys,
    record: Record,
    token: Token,
    token_record: Record,
    secret: Secret,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let keys = ServerKeys::generate();
        let secret = Secret::generate();
        let record =
            Record::register(&keys, secret.as_bytes(), &driver::credential_for(1)).unwrap();
        let token = Token::generate();
        let token_record =
            Record::register(&keys, token.secret_bytes(), token.id.as_bytes()).unwrap();
        Fixture {
            rt: tokio::runtime::Builder::new_current_thread().build().unwrap(),
            keys,
            record,
            token,
            token_record,
            secret,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&role, peer)) = data.split_first() else {
        return;
    };
    let f = fixture();
    let binding = Binding::from_bytes([7; 32]);
    // The peer's bytes in, ours to nowhere.
    let mut io = tokio::io::join(peer, tokio::io::sink());
    f.rt.block_on(async {
        match role % 6 {
            0 => {
                if let Ok(hello) = driver::read_hello(&mut io).await {
                    let passed = driver::check(&mut io, &hello, &f.keys, Some(&f.record), &binding)
                        .await;
                    assert!(passed.is_err(), "a peer without the secret passed the check");
                }
            }
            1 => {
                let _ = driver::answer_registration(&mut io, &f.keys).await;
            }
            2 => {
                let _ = driver::prove_token(&mut io, &f.token, &binding).await;
            }
            3 => {
                let verified =
                    driver::verify_token(&mut io, &f.token.id, &f.keys, &f.token_record, &binding)
                        .await;
                assert!(verified.is_err(), "a peer without the token passed");
            }
            4 => {
                // A KE2 that verifies needs the record made from the secret.
                let proved =
                    driver::prove(&mut io, Purpose::Relay, 1, &f.secret, &binding).await;
                assert!(proved.is_err(), "a peer without the record convinced the gateway");
            }
            _ => {
                let settings = Settings {
                    host: "h1".into(),
                    generation: 2,
                    gateway_pins: vec![[1; 32]],
                };
                let _ = driver::register(&mut io, &settings, &f.secret).await;
            }
        }
    });
});
