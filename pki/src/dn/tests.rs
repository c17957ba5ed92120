use super::*;
use rcgen::{CertificateParams, KeyPair};
use x509_parser::prelude::FromDer;

fn entries(text: &str) -> Vec<(DnType, String)> {
    parse_dn(text)
        .unwrap()
        .iter()
        .map(|(t, v)| {
            let v = match v {
                DnValue::Utf8String(s) => s.clone(),
                DnValue::PrintableString(s) => s.as_str().to_string(),
                other => panic!("unexpected value type {other:?}"),
            };
            (t.clone(), v)
        })
        .collect()
}

/// The subject DN string of a certificate issued for `text`.
fn issued_subject(text: &str) -> String {
    let mut params = CertificateParams::default();
    params.distinguished_name = parse_dn(text).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    crate::subject_dn(cert.der()).unwrap()
}

// --- hand-built names, for what rcgen cannot issue -------------------------------------------

const CN: &[u8] = &[0x06, 0x03, 0x55, 0x04, 0x03];
const O: &[u8] = &[0x06, 0x03, 0x55, 0x04, 0x0a];
const OU: &[u8] = &[0x06, 0x03, 0x55, 0x04, 0x0b];
/// 1.2.3.4, which has no short name.
const UNNAMED: &[u8] = &[0x06, 0x03, 0x2a, 0x03, 0x04];

fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    match content.len() {
        n @ 0..=127 => out.push(n as u8),
        n @ 128..=255 => out.extend([0x81, n as u8]),
        n => out.extend([0x82, (n >> 8) as u8, n as u8]),
    }
    out.extend_from_slice(content);
    out
}

fn utf8(text: &str) -> Vec<u8> {
    tlv(0x0c, text.as_bytes())
}

fn bmp(text: &str) -> Vec<u8> {
    let units: Vec<u8> = text.encode_utf16().flat_map(u16::to_be_bytes).collect();
    tlv(0x1e, &units)
}

fn attribute(oid: &[u8], value: Vec<u8>) -> Vec<u8> {
    tlv(0x30, &[oid, &value].concat())
}

/// A Name from RDNs, each a list of (type OID, encoded value).
fn name(rdns: &[Vec<(&[u8], Vec<u8>)>]) -> Vec<u8> {
    let rdns: Vec<u8> = rdns
        .iter()
        .flat_map(|rdn| {
            let attributes: Vec<u8> = rdn
                .iter()
                .flat_map(|(oid, value)| attribute(oid, value.clone()))
                .collect();
            tlv(0x31, &attributes)
        })
        .collect();
    tlv(0x30, &rdns)
}

fn render(der: &[u8]) -> String {
    let (rest, parsed) = X509Name::from_der(der).expect("a valid Name");
    assert!(rest.is_empty());
    dn_string(&parsed)
}

// --- parse_dn ---------------------------------------------------------------------------------

#[test]
fn keeps_every_supported_attribute_in_the_order_given() {
    assert_eq!(
        entries("C=GB, ST=London,L=Camden,O=Example,OU=Ops,CN=alice"),
        vec![
            (DnType::CountryName, "GB".into()),
            (DnType::StateOrProvinceName, "London".into()),
            (DnType::LocalityName, "Camden".into()),
            (DnType::OrganizationName, "Example".into()),
            (DnType::OrganizationalUnitName, "Ops".into()),
            (DnType::CommonName, "alice".into()),
        ]
    );
    assert_eq!(
        entries("cn=bob,o=Example"),
        vec![
            (DnType::CommonName, "bob".into()),
            (DnType::OrganizationName, "Example".into()),
        ],
        "attribute names are case-insensitive; order is the caller's"
    );
}

#[test]
fn escaped_commas_and_equals_signs_stay_in_the_value() {
    assert_eq!(
        entries(r"O=Example\, Inc.,CN=a\=b"),
        vec![
            (DnType::OrganizationName, "Example, Inc.".into()),
            (DnType::CommonName, "a=b".into()),
        ]
    );
}

#[test]
fn escaped_spaces_hex_bytes_and_specials_are_read_as_rfc_4514_writes_them() {
    assert_eq!(
        entries(r"O=\ lead\, trail\ ,CN=\#1 \+ \22q\22 \3c\3E nul\00 \C3\A9"),
        vec![
            (DnType::OrganizationName, " lead, trail ".into()),
            (DnType::CommonName, "#1 + \"q\" <> nul\0 é".into()),
        ]
    );
    assert_eq!(
        entries("O = spaced ,CN=x"),
        vec![
            (DnType::OrganizationName, "spaced".into()),
            (DnType::CommonName, "x".into()),
        ],
        "unescaped spaces around a value are not part of it"
    );
}

#[test]
fn an_unknown_attribute_is_named_in_the_error() {
    let err = parse_dn("O=Example,EMAIL=a@example.com,CN=alice")
        .unwrap_err()
        .to_string();
    assert!(err.contains("\"EMAIL\""), "{err}");
    assert!(err.contains("C, ST, L, O, OU, CN"), "{err}");
}

#[test]
fn malformed_dns_are_refused_with_the_reason() {
    for (dn, why) in [
        ("", "empty"),
        ("O=Example", "no CN"),
        ("CN", "no '='"),
        ("CN=", "empty value"),
        ("O=a,,CN=b", "empty component"),
        ("C=GBR,CN=a", "two-letter"),
        ("OU=a,OU=b,CN=c", "twice"),
        ("CN=a\\", "lone '\\'"),
        ("CN=\\ff", "not UTF-8"),
    ] {
        let err = parse_dn(dn).unwrap_err().to_string();
        assert!(err.contains(why), "{dn:?}: {err}");
    }
}

#[test]
fn what_rcgen_cannot_issue_is_refused_rather_than_issued_differently() {
    for (dn, why) in [
        ("O=A+CN=b", "multi-valued RDN"),
        ("O=A+B,CN=b", "multi-valued RDN"),
        ("O=#0c0141,CN=b", "hex-encoded value"),
        ("O=#zz,CN=b", "not hex"),
    ] {
        let err = parse_dn(dn).unwrap_err().to_string();
        assert!(err.contains(why), "{dn:?}: {err}");
        assert!(
            err.contains("\\+") || err.contains("\\#"),
            "says how to escape: {err}"
        );
    }
}

// --- subject_dn(issue(parse_dn(s))) == s ---------------------------------------------------------

#[test]
fn a_dn_written_the_way_subject_dn_writes_it_survives_issuing() {
    for text in [
        "C=GB,O=Example,CN=alice",
        "CN=bob,O=Example",
        r"O=Dev,CN=bob\,O=Ops",
        "O=Evil,CN=xCN=alice",
        r"O=Example\, Inc.,OU=R\+D,CN=a\+b",
        r"CN=\#not-hex",
        r"CN=\ leading and trailing\ ",
        r#"O=\"quoted\" \\ back \<angle\> semi\;,CN=x"#,
        r"CN=nul\00byte and newline\0A",
        "ST=Île-de-France,L=Zürich,CN=Jürgen 東京",
        "CN=a=b",
    ] {
        assert_eq!(issued_subject(text), text);
    }
}

// --- dn_string --------------------------------------------------------------------------------

#[test]
fn values_are_escaped_as_rfc_4514_says() {
    for (value, written) in [
        ("a,b", r"a\,b"),
        ("a+b", r"a\+b"),
        ("\"a\"", r#"\"a\""#),
        (r"a\b", r"a\\b"),
        ("<a>", r"\<a\>"),
        ("a;b", r"a\;b"),
        ("#a#", r"\#a#"),
        (" a b ", r"\ a b\ "),
        (" ", r"\ "),
        ("a=b", "a=b"),
        ("nul\0", r"nul\00"),
        ("tab\t\u{7f}\u{85}", r"tab\09\7F\C2\85"),
        ("é", "é"),
    ] {
        let der = name(&[vec![(CN, utf8(value))]]);
        assert_eq!(render(&der), format!("CN={written}"), "{value:?}");
    }
}

#[test]
fn a_multi_valued_rdn_is_joined_with_plus_and_its_values_are_escaped() {
    let der = name(&[
        vec![(O, utf8("Example"))],
        vec![(OU, utf8("a+b")), (CN, utf8("alice"))],
    ]);
    assert_eq!(render(&der), r"O=Example,OU=a\+b+CN=alice");
}

#[test]
fn character_strings_of_every_kind_are_text_and_other_values_are_hex_der() {
    let der = name(&[
        vec![(CN, tlv(0x13, b"printable"))],
        vec![(CN, tlv(0x16, b"ia5"))],
        vec![(CN, bmp("bmp é"))],
        vec![(CN, tlv(0x1c, &[0, 0, 0, 0x55]))],
        vec![(CN, tlv(0x14, b"teletex"))],
        vec![(CN, tlv(0x02, &[0x01]))],
        vec![(CN, tlv(0x0c, &[0xff, 0xfe]))],
        vec![(CN, tlv(0x1e, &[0xd8, 0x00]))],
        vec![(UNNAMED, utf8("x"))],
    ]);
    assert_eq!(
        render(&der),
        "CN=printable,CN=ia5,CN=bmp é,CN=U,CN=#140774656c65746578,CN=#020101,CN=#0c02fffe,\
         CN=#1e02d800,1.2.3.4=x"
    );
}

#[test]
fn the_common_name_part_is_found_past_escaped_commas() {
    assert_eq!(common_name_part("C=GB,O=Example,CN=alice"), "CN=alice");
    assert_eq!(common_name_part(r"O=Dev,CN=bob\,O=Ops"), r"CN=bob\,O=Ops");
    assert_eq!(common_name_part(r"O=a\,CN=x,OU=b+CN=c"), "OU=b+CN=c");
    assert_eq!(common_name_part("O=Example"), "O=Example");
}

// --- two different subjects never render to the same string ----------------------------------

/// A small deterministic generator, so the property below is checked on the same names every
/// run.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

/// What a name is, as text-or-DER values: the structure [`read_dn`] must recover.
type Structure = Vec<Vec<Attribute>>;

fn random_name(rng: &mut Lcg) -> (Vec<u8>, Structure) {
    const PIECES: [&str; 16] = [
        "a", "CN=", "O", ",", "+", "=", "\\", "\"", "#", " ", ";", "<>", "\0", "\n", "é", "\\2C",
    ];
    const TYPES: [(&[u8], &str); 4] = [(CN, "CN"), (O, "O"), (OU, "OU"), (UNNAMED, "1.2.3.4")];
    let mut rdns = Vec::new();
    let mut structure = Vec::new();
    for _ in 0..1 + rng.below(3) {
        let mut rdn = Vec::new();
        let mut attributes = Vec::new();
        for _ in 0..1 + rng.below(2) {
            let (oid, key) = rng.pick(&TYPES);
            let (value, parsed) = if rng.below(6) == 0 {
                let der = tlv(0x02, &[rng.below(256) as u8]);
                (der.clone(), AttributeValue::Der(der))
            } else {
                let text: String = (0..rng.below(5)).map(|_| rng.pick(&PIECES)).collect();
                let encoded = if rng.below(2) == 0 {
                    utf8(&text)
                } else {
                    bmp(&text)
                };
                (encoded, AttributeValue::Text(text))
            };
            rdn.push((oid, value));
            attributes.push(Attribute {
                key: key.to_string(),
                value: parsed,
            });
        }
        rdns.push(rdn);
        structure.push(attributes);
    }
    (name(&rdns), structure)
}

#[test]
fn every_rendered_name_reads_back_as_the_name_it_came_from() {
    // read_dn undoes dn_string, so two names with different RDNs, types or values can never
    // share a string: a policy glob sees exactly one spelling per subject.
    let mut rng = Lcg(8);
    for _ in 0..5000 {
        let (der, structure) = random_name(&mut rng);
        let text = render(&der);
        assert_eq!(read_dn(&text), Ok(structure), "{text}");
    }
}

#[test]
fn look_alike_subjects_render_differently() {
    let pairs = [
        (
            name(&[vec![(O, utf8("Dev"))], vec![(CN, utf8("bob,O=Ops"))]]),
            name(&[
                vec![(O, utf8("Dev"))],
                vec![(CN, utf8("bob"))],
                vec![(O, utf8("Ops"))],
            ]),
        ),
        (
            name(&[vec![(CN, utf8("a+O=b"))]]),
            name(&[vec![(CN, utf8("a")), (O, utf8("b"))]]),
        ),
        (
            name(&[vec![(O, utf8("Evil"))], vec![(CN, utf8("xCN=alice"))]]),
            name(&[
                vec![(O, utf8("Evil"))],
                vec![(CN, utf8("x"))],
                vec![(CN, utf8("alice"))],
            ]),
        ),
        (
            name(&[vec![(CN, utf8("#020101"))]]),
            name(&[vec![(CN, tlv(0x02, &[0x01]))]]),
        ),
        (
            name(&[vec![(CN, utf8(" alice"))]]),
            name(&[vec![(CN, utf8("alice"))]]),
        ),
        (
            name(&[vec![(CN, utf8("a\0"))]]),
            name(&[vec![(CN, utf8("a\\00"))]]),
        ),
    ];
    for (a, b) in pairs {
        assert_ne!(render(&a), render(&b));
    }
}
