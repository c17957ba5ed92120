//! Text an operator pastes or a file holds: enrollment tokens (`virtgate agent --enroll`), the
//! gateway's per-host secret files, hex secrets. Parsing never panics; what parses prints back
//! to text that parses to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use virtgate_pake::{HostSecret, Secret, Token};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(token) = text.parse::<Token>() {
        assert!(Token::is_id(&token.id));
        assert_eq!(token.reveal().parse::<Token>().unwrap(), token);
    }
    if let Some(s) = HostSecret::parse(text) {
        assert!(s.generation > 0 && s.secret.as_bytes().len() >= 16);
        let back = HostSecret::parse(&s.to_file_text()).unwrap();
        assert_eq!(back.generation, s.generation);
        assert_eq!(back.secret.as_bytes(), s.secret.as_bytes());
    }
    if let Some(s) = Secret::from_hex(text) {
        assert_eq!(Secret::from_hex(&s.to_hex()).unwrap().as_bytes(), s.as_bytes());
    }
    let _ = HostSecret::is_file_name(text);
});
