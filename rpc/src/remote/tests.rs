use super::*;
use crate::packet::{call, ok_reply, Header, Packet, Program, HEADER_LEN};
use crate::test_support::hex;
use crate::xdr::put_u32;

/// Encodes, decodes, and checks both the value and that encoding is stable.
fn round_trip<T>(value: T)
where
    T: for<'a> Xdr<'a> + PartialEq + std::fmt::Debug,
{
    let bytes = value.to_xdr();
    assert_eq!(bytes.len() % 4, 0, "{value:?} is not 4-byte aligned");
    let back = T::from_xdr(&bytes).expect("decodes what it encoded");
    assert_eq!(back, value);
    assert_eq!(back.to_xdr(), bytes);
}

#[test]
fn every_typed_message_round_trips() {
    round_trip(ConnectOpenArgs {
        name: Some("qemu:///system".into()),
        flags: OPEN_FLAG_READ_ONLY,
    });
    round_trip(ConnectOpenArgs {
        name: Some(String::new()),
        flags: 0,
    });
    round_trip(ConnectOpenArgs {
        name: None,
        flags: 6,
    });
    round_trip(AuthListReply(vec![]));
    round_trip(AuthListReply(vec![
        AuthType::None,
        AuthType::Sasl,
        AuthType::Polkit,
        AuthType::Other(9),
    ]));
    round_trip(SupportsFeatureArgs {
        feature: FEATURE_PROGRAM_KEEPALIVE,
    });
    round_trip(SupportsFeatureReply { supported: true });
    round_trip(SupportsFeatureReply { supported: false });
    round_trip(SaslInitReply {
        mechlist: "SCRAM-SHA-512,SCRAM-SHA-256".into(),
    });
    round_trip(SaslStartArgs {
        mech: "SCRAM-SHA-256".into(),
        data: Some(b"n,,n=alice,r=abc".to_vec()),
    });
    round_trip(SaslStartArgs {
        mech: "DIGEST-MD5".into(),
        data: None,
    });
    round_trip(SaslStartReply {
        complete: false,
        data: Some((0..=255).collect()),
    });
    round_trip(SaslStepArgs {
        data: Some(Vec::new()),
    });
    round_trip(SaslStepArgs { data: None });
    round_trip(SaslStepReply {
        complete: true,
        data: Some(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=".to_vec()),
    });
    round_trip(PolkitReply { complete: true });
    round_trip(GetLibVersionReply { lib_ver: 9_000_000 });
    round_trip(GetHostnameReply {
        hostname: "h1.example".into(),
    });
    round_trip(crate::ErrorReply::new(
        crate::ErrorNumber::AUTH_FAILED,
        crate::ErrorDomain::FROM_RPC,
        "authentication failed: authentication failed",
    ));
}

#[test]
fn decodes_the_captured_pre_open_exchange() {
    let sasl =
        hex("00000024 20008086 00000001 00000042 00000001 00000000 00000000 00000001 00000001");
    let p = Packet::parse(&sasl).unwrap();
    assert_eq!(
        AuthListReply::from_xdr(p.payload),
        Ok(AuthListReply(vec![AuthType::Sasl]))
    );

    let init = hex("00000030 20008086 00000001 00000043 00000001 00000001 00000000 0000000d 53435241 4d2d5348 412d3235 36000000");
    let p = Packet::parse(&init).unwrap();
    assert_eq!(p.header.procedure, PROC_AUTH_SASL_INIT);
    assert_eq!(
        SaslInitReply::from_xdr(p.payload).map(|r| r.mechlist),
        Ok("SCRAM-SHA-256".to_string())
    );

    let feature_call =
        hex("00000020 20008086 00000001 0000003c 00000000 00000001 00000000 0000000a");
    let p = Packet::parse(&feature_call).unwrap();
    let args = SupportsFeatureArgs::from_xdr(p.payload).unwrap();
    assert_eq!(args.feature, FEATURE_PROGRAM_KEEPALIVE);
    assert_eq!(
        call(
            Program::Remote,
            PROC_CONNECT_SUPPORTS_FEATURE,
            1,
            &args.to_xdr()
        ),
        feature_call
    );
    assert_eq!(
        ok_reply(&p.header, &SupportsFeatureReply { supported: true }),
        hex("00000020 20008086 00000001 0000003c 00000001 00000001 00000000 00000001")
    );

    let open_ro = hex("00000038 20008086 00000001 00000001 00000000 00000001 00000000 00000001 0000000f 74657374 3a2f2f2f 64656661 756c7400 00000001");
    let p = Packet::parse(&open_ro).unwrap();
    let open = ConnectOpenArgs::from_xdr(p.payload).unwrap();
    assert_eq!(open.flags & OPEN_FLAG_READ_ONLY, OPEN_FLAG_READ_ONLY);
    assert_eq!(crate::packet::packet(p.header, &open.to_xdr()), open_ro);

    let lib =
        hex("00000024 20008086 00000001 0000009d 00000001 00000004 00000000 00000000 00895440");
    let p = Packet::parse(&lib).unwrap();
    assert_eq!(
        GetLibVersionReply::from_xdr(p.payload),
        Ok(GetLibVersionReply { lib_ver: 9_000_000 })
    );
}

#[test]
fn a_modified_connect_open_re_encodes_with_the_clients_serial() {
    let open = hex("00000038 20008086 00000001 00000001 00000000 00000002 00000000 00000001 0000000f 74657374 3a2f2f2f 64656661 756c7400 00000000");
    let p = Packet::parse(&open).unwrap();
    let mut args = ConnectOpenArgs::from_xdr(p.payload).unwrap();
    args.name = Some("qemu:///system".into());
    args.flags |= OPEN_FLAG_READ_ONLY;
    let forwarded = crate::packet::packet(p.header, &args.to_xdr());
    let q = Packet::parse(&forwarded).unwrap();
    assert_eq!(q.header.serial, 2);
    assert_eq!(q.header.len as usize, forwarded.len());
    assert_eq!(ConnectOpenArgs::from_xdr(q.payload), Ok(args));
}

#[test]
fn sasl_char_arrays_take_four_bytes_per_byte() {
    // 'n,,' as in the note: count 3, then 0000006e 0000002c 0000002c.
    let step = SaslStepArgs {
        data: Some(b"n,,".to_vec()),
    };
    assert_eq!(
        step.to_xdr(),
        hex("00000000 00000003 0000006e 0000002c 0000002c")
    );
}

#[test]
fn sign_extended_bytes_decode_and_bytes_from_0x80_encode_sign_extended() {
    // virsh sent the user name "ålice" as ... ffffffc3 ffffffa5 0000006c ...
    let wire = hex("00000000 00000006 ffffffc3 ffffffa5 0000006c 00000069 00000063 00000065");
    let step = SaslStepArgs::from_xdr(&wire).unwrap();
    assert_eq!(step.data.as_deref(), Some("ålice".as_bytes()));
    assert_eq!(step.to_xdr(), wire);
    // An unsigned-char platform sends the same bytes zero-extended; they decode alike.
    let zero_extended = hex("00000000 00000002 000000c3 000000a5");
    assert_eq!(
        SaslStepArgs::from_xdr(&zero_extended).map(|s| s.data),
        Ok(Some("å".as_bytes().to_vec()))
    );
}

#[test]
fn a_scram_start_with_37_data_bytes_is_a_204_byte_packet() {
    let start = SaslStartArgs {
        mech: "SCRAM-SHA-256".into(),
        data: Some(vec![b'x'; 37]),
    };
    let packet = call(Program::Remote, PROC_AUTH_SASL_START, 1, &start.to_xdr());
    // 28 header + 20 mech string (4 + 13 + 3 padding) + 4 nil + 4 count + 37 × 4.
    assert_eq!(packet.len(), 204);
    assert_eq!(Header::parse(&packet).map(|h| h.len), Ok(204));
    assert_eq!(SaslStartArgs::from_xdr(&packet[HEADER_LEN..]), Ok(start));
}

#[test]
fn nil_sasl_data_differs_from_empty_data() {
    let nil = SaslStepArgs { data: None }.to_xdr();
    let empty = SaslStepArgs {
        data: Some(Vec::new()),
    }
    .to_xdr();
    assert_eq!(nil, hex("00000001 00000000"));
    assert_eq!(empty, hex("00000000 00000000"));
    assert_eq!(SaslStepArgs::from_xdr(&nil).map(|s| s.data), Ok(None));
    assert_eq!(
        SaslStepArgs::from_xdr(&empty).map(|s| s.data),
        Ok(Some(Vec::new()))
    );
    // Like libvirtd, data sent alongside nil is ignored.
    assert_eq!(
        SaslStepArgs::from_xdr(&hex("00000001 00000001 00000041")).map(|s| s.data),
        Ok(None)
    );
}

#[test]
fn truncated_messages_give_truncated() {
    let start = SaslStartArgs {
        mech: "SCRAM-SHA-256".into(),
        data: Some(b"n,,n=alice".to_vec()),
    }
    .to_xdr();
    for cut in 0..start.len() {
        assert_eq!(
            SaslStartArgs::from_xdr(&start[..cut]),
            Err(XdrError::Truncated),
            "cut at {cut}"
        );
    }
    assert_eq!(
        ConnectOpenArgs::from_xdr(&hex("00000001 0000000f 74657374")),
        Err(XdrError::Truncated)
    );
    assert_eq!(
        SupportsFeatureArgs::from_xdr(&[0, 0]),
        Err(XdrError::Truncated)
    );
}

#[test]
fn oversized_lists_and_sasl_data_are_refused() {
    let mut list = Vec::new();
    put_u32(&mut list, 21);
    list.extend(std::iter::repeat_n(0u8, 21 * 4));
    assert_eq!(
        AuthListReply::from_xdr(&list),
        Err(XdrError::TooLong { len: 21, max: 20 })
    );
    let mut data = Vec::new();
    put_u32(&mut data, 0);
    put_u32(&mut data, REMOTE_AUTH_SASL_DATA_MAX + 1);
    assert_eq!(
        SaslStepArgs::from_xdr(&data),
        Err(XdrError::TooLong {
            len: REMOTE_AUTH_SASL_DATA_MAX + 1,
            max: REMOTE_AUTH_SASL_DATA_MAX
        })
    );
    // A CONNECT_OPEN whose optional name has discriminant 2 is malformed.
    assert_eq!(
        ConnectOpenArgs::from_xdr(&hex("00000002 00000000")),
        Err(XdrError::BadDiscriminant(2))
    );
}

#[test]
fn int_truth_values_read_like_libvirts_c() {
    assert_eq!(
        SupportsFeatureReply::from_xdr(&hex("00000002")),
        Ok(SupportsFeatureReply { supported: true })
    );
    assert_eq!(
        PolkitReply::from_xdr(&hex("ffffffff")),
        Ok(PolkitReply { complete: true })
    );
    assert_eq!(
        SupportsFeatureReply { supported: true }.to_xdr(),
        hex("00000001")
    );
}
