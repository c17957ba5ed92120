use super::*;

// RFC 7677 §3, recomputed in secondary-checks.md §3.2.
const USER: &str = "user";
const PASSWORD: &str = "pencil";
const SALT: &str = "W22ZaJ0SNY7soEsUEjb6gQ==";
const CLIENT_NONCE: &str = "rOprNGfwEbeRWgbNEkqO";
const SERVER_NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
const CLIENT_FIRST: &str = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
const SERVER_FIRST: &str =
    "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
const CLIENT_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
const SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";
const STORED_KEY: &str = "WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=";
const SERVER_KEY: &str = "wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=";

fn password(p: &str) -> ClientSecret {
    ClientSecret {
        password: Some(p.into()),
        salted: Vec::new(),
    }
}

fn salt() -> Vec<u8> {
    B64.decode(SALT).unwrap()
}

fn rfc_verifier() -> Verifier {
    Verifier::from_password(Mechanism::Sha256, PASSWORD, &salt(), 4096).unwrap()
}

#[test]
fn the_verifier_of_rfc_7677_holds_its_stored_key_and_server_key() {
    let v = rfc_verifier();
    assert_eq!(B64.encode(&v.stored_key), STORED_KEY);
    assert_eq!(B64.encode(&v.server_key), SERVER_KEY);
    assert!(v.is_well_formed());
}

#[test]
fn the_server_answers_rfc_7677s_client_with_rfc_7677s_messages() {
    let first = ClientFirst::parse(CLIENT_FIRST.as_bytes()).unwrap();
    assert_eq!(first.user, USER);
    let (exchange, server_first) = ServerExchange::start(&first, rfc_verifier(), SERVER_NONCE);
    assert_eq!(String::from_utf8(server_first).unwrap(), SERVER_FIRST);
    let server_final = exchange.finish(CLIENT_FINAL.as_bytes()).unwrap();
    assert_eq!(String::from_utf8(server_final).unwrap(), SERVER_FINAL);
}

#[test]
fn the_client_sends_rfc_7677s_messages_and_accepts_its_server_signature() {
    let (exchange, first) = ClientExchange::start(Mechanism::Sha256, USER, CLIENT_NONCE);
    assert_eq!(String::from_utf8(first).unwrap(), CLIENT_FIRST);
    let secret = password(PASSWORD);
    let (waiting, client_final) = exchange.respond(SERVER_FIRST.as_bytes(), &secret).unwrap();
    assert_eq!(String::from_utf8(client_final).unwrap(), CLIENT_FINAL);
    let salted = waiting.verify(SERVER_FINAL.as_bytes()).unwrap();
    assert_eq!(salted.salt, salt());
    assert_eq!(salted.iterations, 4096);

    // The SaltedPassword it returns logs in as the password did, without PBKDF2.
    let (exchange, _) = ClientExchange::start(Mechanism::Sha256, USER, CLIENT_NONCE);
    let (waiting, again) = exchange
        .respond(
            SERVER_FIRST.as_bytes(),
            &ClientSecret {
                password: None,
                salted: vec![salted],
            },
        )
        .unwrap();
    assert_eq!(String::from_utf8(again).unwrap(), CLIENT_FINAL);
    waiting.verify(SERVER_FINAL.as_bytes()).unwrap();
}

#[test]
fn a_wrong_password_fails_at_the_proof_and_a_forged_signature_at_the_client() {
    let first = ClientFirst::parse(CLIENT_FIRST.as_bytes()).unwrap();
    let wrong = Verifier::from_password(Mechanism::Sha256, "pencil2", &salt(), 4096).unwrap();
    let (exchange, _) = ServerExchange::start(&first, wrong, SERVER_NONCE);
    assert_eq!(
        exchange.finish(CLIENT_FINAL.as_bytes()),
        Err(ScramError::WrongProof)
    );

    let (exchange, _) = ClientExchange::start(Mechanism::Sha256, USER, CLIENT_NONCE);
    let secret = password(PASSWORD);
    let (waiting, _) = exchange.respond(SERVER_FIRST.as_bytes(), &secret).unwrap();
    let forged = "v=7rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";
    assert_eq!(
        waiting.verify(forged.as_bytes()),
        Err(ScramError::BadServerSignature)
    );
}

#[test]
fn sha_512_logs_in_both_ways_and_names_with_commas_and_equals_are_escaped() {
    let salt = b"0123456789abcdef";
    let verifier = Verifier::from_password(Mechanism::Sha512, "pässwörd", salt, 4096).unwrap();
    assert!(verifier.is_well_formed());
    let user = "a,b=c";
    let (client, first) = ClientExchange::start(Mechanism::Sha512, user, &nonce());
    assert!(String::from_utf8_lossy(&first).contains("n=a=2Cb=3Dc,"));
    let parsed = ClientFirst::parse(&first).unwrap();
    assert_eq!(parsed.user, user);
    let (server, server_first) = ServerExchange::start(&parsed, verifier, &nonce());
    let secret = password("pässwörd");
    let (waiting, client_final) = client.respond(&server_first, &secret).unwrap();
    let server_final = server.finish(&client_final).unwrap();
    waiting.verify(&server_final).unwrap();
}

#[test]
fn the_server_refuses_channel_binding_other_authzids_extensions_and_a_changed_nonce() {
    for (message, error) in [
        ("p=tls-unique,,n=user,r=abc", ScramError::ChannelBinding),
        ("n,a=root,n=user,r=abc", ScramError::Authzid),
        ("n,,m=ext,n=user,r=abc", ScramError::Extension),
        ("n,,n=user", ScramError::Malformed("no r= nonce")),
        (
            "n,,n=us=er,r=abc",
            ScramError::Malformed("a user name with a stray '='"),
        ),
        (
            "x,,n=user,r=abc",
            ScramError::Malformed("no channel-binding flag"),
        ),
    ] {
        assert_eq!(
            ClientFirst::parse(message.as_bytes()),
            Err(error),
            "{message}"
        );
    }
    assert!(ClientFirst::parse(b"n,a=user,n=user,r=abc").is_ok());
    assert!(ClientFirst::parse(b"y,,n=user,r=abc").is_ok());
    assert_eq!(
        ClientFirst::parse(&vec![b'a'; MAX_MESSAGE + 1]),
        Err(ScramError::TooLong)
    );

    let first = ClientFirst::parse(CLIENT_FIRST.as_bytes()).unwrap();
    let (exchange, _) = ServerExchange::start(&first, rfc_verifier(), "other");
    assert_eq!(
        exchange.finish(CLIENT_FINAL.as_bytes()),
        Err(ScramError::Continuity)
    );
}

#[test]
fn the_client_bounds_the_work_a_host_can_ask_for_and_refuses_a_stale_salted_password() {
    let secret = password(PASSWORD);
    let (exchange, _) = ClientExchange::start(Mechanism::Sha256, USER, CLIENT_NONCE);
    let greedy = format!("r={CLIENT_NONCE}x,s={SALT},i=4294967295");
    assert!(matches!(
        exchange.respond(greedy.as_bytes(), &secret),
        Err(ScramError::Iterations { .. })
    ));
    let (exchange, _) = ClientExchange::start(Mechanism::Sha256, USER, CLIENT_NONCE);
    let stale = ClientSecret {
        password: None,
        salted: vec![Salted {
            mechanism: Mechanism::Sha256,
            iterations: 4096,
            salt: b"another salt".to_vec(),
            salted_password: vec![0; 32],
        }],
    };
    assert_eq!(
        exchange.respond(SERVER_FIRST.as_bytes(), &stale).err(),
        Some(ScramError::StaleSalted)
    );
    let (exchange, _) = ClientExchange::start(Mechanism::Sha256, USER, CLIENT_NONCE);
    assert_eq!(
        exchange
            .respond(b"r=someone-else,s=W22Z,i=4096", &secret)
            .err(),
        Some(ScramError::Continuity)
    );
    let (exchange, _) = ClientExchange::start(Mechanism::Sha256, USER, CLIENT_NONCE);
    assert_eq!(
        exchange.respond(b"e=unknown-user", &secret).err(),
        Some(ScramError::ServerRefused("unknown-user".into()))
    );
}

#[test]
fn secrets_never_show_in_debug_output() {
    let secret = password("hunter2");
    assert!(!format!("{secret:?}").contains("hunter2"));
    let v = rfc_verifier();
    assert!(!format!("{v:?}").contains(&format!("{:?}", v.stored_key)));
}
