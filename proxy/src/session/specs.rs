//! In-process specifications of the pre-open exchange, the host's handshake and the relay, over
//! in-memory streams with paused time: no root, no network, milliseconds each. The end-to-end
//! tests against real virsh and libvirtd (`tests/proxy_e2e.rs`) stay the oracle; these pin the
//! behaviour down step by step.

use std::time::Duration;

use tokio::io::{duplex, AsyncWriteExt, DuplexStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use virtgate_rpc::remote::{
    AuthListReply, AuthType, ConnectOpenArgs, SaslStartArgs, SupportsFeatureArgs,
    SupportsFeatureReply, FEATURE_PROGRAM_KEEPALIVE, OPEN_FLAG_READ_ONLY, PROC_AUTH_LIST,
    PROC_AUTH_SASL_START, PROC_CONNECT_OPEN, PROC_CONNECT_SUPPORTS_FEATURE,
};
use virtgate_rpc::{
    call, ok_reply, packet, ping, ErrorNumber, ErrorReply, Header, MessageType, Packet,
    PacketStream, Program, Reader, Status, Xdr, MAX_LEN,
};

use super::admit::Admitted;
use super::backend;
use super::outcome::ConnectionResult;
use super::preopen::{until_open, OpenRequest};
use crate::calls::CallGuard;
use crate::directory::{Admission, HostTarget};
use crate::metrics::ProxyMetrics;
use crate::policy::Mode;
use crate::relay::{relay, RelayContext, RelayEnd, RelayLimits, RelayStats};

fn metrics() -> ProxyMetrics {
    ProxyMetrics::register(&prometheus::Registry::new()).expect("fresh registry")
}

/// Both ends of an in-memory connection, each read and written a packet at a time.
fn pipe() -> (PacketStream<DuplexStream>, PacketStream<DuplexStream>) {
    let (a, b) = duplex(1 << 20);
    (PacketStream::new(a), PacketStream::new(b))
}

async fn next(stream: &mut PacketStream<DuplexStream>) -> (Header, Vec<u8>) {
    let bytes = stream
        .read_packet(MAX_LEN)
        .await
        .expect("a packet")
        .expect("not the end of the stream");
    let p = Packet::parse(bytes).expect("a valid packet");
    (p.header, p.payload.to_vec())
}

fn open_call(serial: u32, name: &str, flags: u32) -> Vec<u8> {
    let args = ConnectOpenArgs {
        name: Some(name.into()),
        flags,
    };
    call(Program::Remote, PROC_CONNECT_OPEN, serial, &args.to_xdr())
}

fn error_of(payload: &[u8]) -> ErrorReply {
    ErrorReply::decode(&mut Reader::new(payload)).expect("an error reply")
}

#[tokio::test(start_paused = true)]
async fn the_gateway_answers_auth_list_itself_and_hands_on_the_open() {
    let (mut client, mut gateway) = pipe();
    let m = metrics();
    let deadline = Instant::now() + Duration::from_secs(10);
    let step = tokio::spawn(async move { until_open(&mut gateway, deadline, &m).await });
    client
        .write_packet(&call(Program::Remote, PROC_AUTH_LIST, 0, &[]))
        .await
        .unwrap();
    let (h, payload) = next(&mut client).await;
    assert_eq!(
        (h.kind, h.status, h.serial),
        (MessageType::Reply, Status::Ok, 0)
    );
    let types = AuthListReply::decode(&mut Reader::new(&payload)).unwrap();
    assert_eq!(
        types.0,
        vec![AuthType::None],
        "the certificate authenticated the client"
    );
    client
        .write_packet(&open_call(2, "qemu://h1/system", 0))
        .await
        .unwrap();
    let open = step.await.unwrap().expect("CONNECT_OPEN is handed on");
    assert_eq!(open.args.name.as_deref(), Some("qemu://h1/system"));
    assert_eq!((open.header.serial, open.wants_keepalive), (2, false));
}

#[tokio::test(start_paused = true)]
async fn keepalive_is_accepted_for_the_host_and_pings_are_answered() {
    let (mut client, mut gateway) = pipe();
    let m = metrics();
    let deadline = Instant::now() + Duration::from_secs(10);
    let step = tokio::spawn(async move { until_open(&mut gateway, deadline, &m).await });
    let feature = SupportsFeatureArgs {
        feature: FEATURE_PROGRAM_KEEPALIVE,
    };
    let ask = call(
        Program::Remote,
        PROC_CONNECT_SUPPORTS_FEATURE,
        1,
        &feature.to_xdr(),
    );
    client.write_packet(&ask).await.unwrap();
    let (h, payload) = next(&mut client).await;
    assert_eq!(h.status, Status::Ok);
    let reply = SupportsFeatureReply::decode(&mut Reader::new(&payload)).unwrap();
    assert!(reply.supported);
    client.write_packet(&ping()).await.unwrap();
    let (h, _) = next(&mut client).await;
    assert_eq!(
        (h.program, h.kind),
        (Program::Keepalive, MessageType::Message)
    );
    client
        .write_packet(&open_call(2, "test:///default", 0))
        .await
        .unwrap();
    assert!(step.await.unwrap().unwrap().wants_keepalive);
}

#[tokio::test(start_paused = true)]
async fn sasl_before_open_is_refused_with_a_message_and_the_session_goes_on() {
    let (mut client, mut gateway) = pipe();
    let m = metrics();
    let deadline = Instant::now() + Duration::from_secs(10);
    let step = tokio::spawn(async move { until_open(&mut gateway, deadline, &m).await });
    let start = SaslStartArgs {
        mech: "SCRAM-SHA-256".into(),
        data: Some(b"n,,n=alice,r=abc".to_vec()),
    };
    let sasl = call(Program::Remote, PROC_AUTH_SASL_START, 3, &start.to_xdr());
    client.write_packet(&sasl).await.unwrap();
    let (h, payload) = next(&mut client).await;
    assert_eq!((h.status, h.serial), (Status::Error, 3));
    let error = error_of(&payload);
    assert_eq!(error.code, ErrorNumber::AUTH_UNAVAILABLE);
    assert!(error
        .message
        .unwrap()
        .contains("authenticated you by your TLS certificate"));
    client
        .write_packet(&open_call(4, "test:///default", 0))
        .await
        .unwrap();
    assert!(step.await.unwrap().is_ok());
}

#[tokio::test(start_paused = true)]
async fn trickled_pings_cannot_stretch_the_pre_open_budget() {
    let (mut client, mut gateway) = pipe();
    let m = metrics();
    let budget = Duration::from_secs(10);
    let started = Instant::now();
    let step = tokio::spawn(async move { until_open(&mut gateway, started + budget, &m).await });
    for _ in 0..30 {
        if client.write_packet(&ping()).await.is_err() {
            break;
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), client.read_packet(MAX_LEN)).await;
    }
    let ended = step.await.unwrap().expect_err("the budget ran out");
    assert_eq!(ended.result, ConnectionResult::Closed);
    assert!(
        ended.detail.contains("no CONNECT_OPEN in time"),
        "{}",
        ended.detail
    );
    assert!(started.elapsed() < budget + Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn a_malformed_open_is_refused_and_counted_as_a_protocol_error() {
    let (mut client, mut gateway) = pipe();
    let m = metrics();
    let counted = m.clone();
    let deadline = Instant::now() + Duration::from_secs(10);
    let step = tokio::spawn(async move { until_open(&mut gateway, deadline, &m).await });
    let truncated = call(Program::Remote, PROC_CONNECT_OPEN, 5, &[0, 0, 0, 1]);
    client.write_packet(&truncated).await.unwrap();
    let (h, payload) = next(&mut client).await;
    assert_eq!((h.status, h.serial), (Status::Error, 5));
    assert_eq!(error_of(&payload).code, ErrorNumber::RPC);
    let ended = step.await.unwrap().expect_err("the session ends");
    assert_eq!(ended.result, ConnectionResult::ProtocolError);
    let bad = counted
        .protocol_errors
        .with_label_values(&["client", "bad_connect_open"]);
    assert_eq!(bad.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn an_oversized_pre_open_packet_is_cut_off_before_it_is_read() {
    let (mut client, mut gateway) = pipe();
    let m = metrics();
    let counted = m.clone();
    let deadline = Instant::now() + Duration::from_secs(10);
    let step = tokio::spawn(async move { until_open(&mut gateway, deadline, &m).await });
    client
        .get_mut()
        .write_all(&(1024u32 * 1024).to_be_bytes())
        .await
        .unwrap();
    let ended = step.await.unwrap().expect_err("cut off");
    assert_eq!(ended.result, ConnectionResult::ProtocolError);
    let too_large = counted
        .protocol_errors
        .with_label_values(&["client", "too_large_before_open"]);
    assert_eq!(too_large.get(), 1);
}

fn admitted(mode: Mode) -> Admitted {
    Admitted {
        host: "h1".into(),
        forwarded: "qemu:///system".into(),
        mode,
        target: HostTarget {
            name: "h1".into(),
            addresses: vec![],
            port: 16514,
            admission: Admission::Connect {
                pin: None,
                allow_ca: false,
                secondary: None,
            },
        },
        pin: None,
        allow_ca: false,
        secondary: None,
    }
}

fn open_request(keepalive: bool) -> OpenRequest {
    OpenRequest {
        header: Header::call(Program::Remote, PROC_CONNECT_OPEN, 7),
        args: ConnectOpenArgs {
            name: Some("qemu://h1/system".into()),
            flags: 0,
        },
        wants_keepalive: keepalive,
    }
}

/// A host that answers AUTH_LIST with `auth`, accepts keepalive, and answers the open.
async fn fake_host(
    mut host: PacketStream<DuplexStream>,
    auth: Vec<AuthType>,
) -> Vec<ConnectOpenArgs> {
    let mut opens = Vec::new();
    while let Ok(Some(bytes)) = host.read_packet(MAX_LEN).await {
        let p = Packet::parse(bytes).unwrap();
        let (h, payload) = (p.header, p.payload.to_vec());
        let reply = match h.procedure {
            PROC_AUTH_LIST => ok_reply(&h, &AuthListReply(auth.clone())),
            PROC_CONNECT_SUPPORTS_FEATURE => {
                ok_reply(&h, &SupportsFeatureReply { supported: true })
            }
            PROC_CONNECT_OPEN => {
                opens.push(ConnectOpenArgs::decode(&mut Reader::new(&payload)).unwrap());
                packet(h.reply(Status::Ok), &[])
            }
            _ => continue,
        };
        // A host PING in the middle must not confuse the gateway.
        host.write_packet(&ping()).await.unwrap();
        host.write_packet(&reply).await.unwrap();
    }
    opens
}

#[tokio::test(start_paused = true)]
async fn the_host_sees_its_own_name_and_the_read_only_bit_for_ro_identities() {
    let (gateway_end, host_end) = pipe();
    let host = tokio::spawn(fake_host(host_end, vec![AuthType::None]));
    let opened = backend::open(
        gateway_end.into_inner(),
        &admitted(Mode::Ro),
        &open_request(true),
        Duration::from_secs(5),
        None,
    )
    .await
    .unwrap_or_else(|r| panic!("refused: {r:?}"));
    let reply = Packet::parse(&opened.reply).unwrap();
    assert_eq!((reply.header.serial, reply.header.status), (7, Status::Ok));
    drop(opened);
    let opens = host.await.unwrap();
    assert_eq!(
        opens,
        vec![ConnectOpenArgs {
            name: Some("qemu:///system".into()),
            flags: OPEN_FLAG_READ_ONLY,
        }]
    );
}

#[tokio::test(start_paused = true)]
async fn a_host_that_demands_sasl_without_credentials_is_refused_naming_the_command_and_gets_no_open(
) {
    let (gateway_end, host_end) = pipe();
    let host = tokio::spawn(fake_host(host_end, vec![AuthType::Sasl]));
    let refusal = backend::open(
        gateway_end.into_inner(),
        &admitted(Mode::Rw),
        &open_request(false),
        Duration::from_secs(5),
        None,
    )
    .await
    .err()
    .expect("refused");
    assert_eq!(refusal.result, ConnectionResult::BackendLoginFailed);
    assert_eq!(refusal.code, ErrorNumber::AUTH_UNAVAILABLE);
    assert!(
        refusal
            .message
            .contains("`virtgate hosts credentials h1 --user NAME`"),
        "{}",
        refusal.message
    );
    assert!(
        host.await.unwrap().is_empty(),
        "no CONNECT_OPEN reached the host"
    );
}

#[tokio::test(start_paused = true)]
async fn a_silent_host_is_refused_within_the_budget() {
    let (gateway_end, _host_end) = pipe();
    let started = Instant::now();
    let refusal = backend::open(
        gateway_end.into_inner(),
        &admitted(Mode::Rw),
        &open_request(false),
        Duration::from_secs(5),
        None,
    )
    .await
    .err()
    .expect("refused");
    assert!(refusal
        .message
        .contains("did not answer the gateway's AUTH_LIST"));
    assert!(started.elapsed() <= Duration::from_secs(6));
}

const LIMITS: RelayLimits = RelayLimits {
    idle_timeout: Duration::from_secs(600),
    write_timeout: Duration::from_secs(60),
};

/// The relay between `client` and `host` for an identity with `mode` on host h1.
async fn relay_as(
    mode: Mode,
    client: DuplexStream,
    host: DuplexStream,
    metrics: &ProxyMetrics,
    shutdown: CancellationToken,
) -> RelayStats {
    let guard = CallGuard::new(mode, "h1", &[]);
    let cx = RelayContext {
        host: "h1",
        metrics,
        limits: LIMITS,
        guard: &guard,
        shutdown,
    };
    relay(client, host, cx).await
}

#[tokio::test(start_paused = true)]
async fn a_host_closing_mid_call_gets_the_client_one_error_per_call_in_flight() {
    let (client_end, mut client) = pipe();
    let (host_end, mut host) = pipe();
    let m = metrics();
    let stats = tokio::spawn(async move {
        let token = CancellationToken::new();
        relay_as(
            Mode::Rw,
            client_end.into_inner(),
            host_end.into_inner(),
            &m,
            token,
        )
        .await
    });
    for serial in [10, 11, 12] {
        client
            .write_packet(&call(Program::Remote, 59, serial, &[]))
            .await
            .unwrap();
    }
    for _ in 0..3 {
        next(&mut host).await;
    }
    drop(host);
    let mut failed = Vec::new();
    for _ in 0..3 {
        let (h, payload) = next(&mut client).await;
        assert_eq!(h.status, Status::Error);
        assert!(error_of(&payload)
            .message
            .unwrap()
            .contains("closed the connection while this call was in progress"));
        failed.push(h.serial);
    }
    failed.sort_unstable();
    assert_eq!(failed, vec![10, 11, 12]);
    let stats = stats.await.unwrap();
    assert!(matches!(
        stats.end,
        RelayEnd::HostClosed { failed_calls: 3 }
    ));
    assert_eq!(stats.calls, 3);
}

#[tokio::test(start_paused = true)]
async fn a_client_that_half_closes_still_gets_the_replies_it_is_owed() {
    let (client_end, mut client) = pipe();
    let (host_end, mut host) = pipe();
    let m = metrics();
    let stats = tokio::spawn(async move {
        let token = CancellationToken::new();
        relay_as(
            Mode::Rw,
            client_end.into_inner(),
            host_end.into_inner(),
            &m,
            token,
        )
        .await
    });
    client
        .write_packet(&call(Program::Remote, 59, 20, &[]))
        .await
        .unwrap();
    client.get_mut().shutdown().await.unwrap();
    let (h, _) = next(&mut host).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    host.write_packet(&packet(h.reply(Status::Ok), &[]))
        .await
        .unwrap();
    let (reply, _) = next(&mut client).await;
    assert_eq!((reply.serial, reply.status), (20, Status::Ok));
    assert!(matches!(stats.await.unwrap().end, RelayEnd::ClientClosed));
}

#[tokio::test(start_paused = true)]
async fn a_quiet_connection_is_closed_after_the_idle_timeout() {
    let (client_end, _client) = pipe();
    let (host_end, _host) = pipe();
    let m = metrics();
    let started = Instant::now();
    let token = CancellationToken::new();
    let stats = relay_as(
        Mode::Rw,
        client_end.into_inner(),
        host_end.into_inner(),
        &m,
        token,
    )
    .await;
    assert!(matches!(stats.end, RelayEnd::Idle));
    let waited = started.elapsed();
    assert!(
        waited >= LIMITS.idle_timeout && waited < LIMITS.idle_timeout * 2,
        "{waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn made_up_procedure_numbers_all_count_as_other() {
    let (client_end, mut client) = pipe();
    let (host_end, mut host) = pipe();
    let m = metrics();
    let registry_view = m.clone();
    let token = CancellationToken::new();
    let stop = token.clone();
    let stats = tokio::spawn(async move {
        relay_as(
            Mode::Rw,
            client_end.into_inner(),
            host_end.into_inner(),
            &m,
            token,
        )
        .await
    });
    for procedure in 5_000..5_100 {
        let made_up = call(Program::Remote, 100_000 + procedure, procedure, &[]);
        client.write_packet(&made_up).await.unwrap();
    }
    for _ in 0..100 {
        next(&mut host).await;
    }
    stop.cancel();
    assert!(matches!(stats.await.unwrap().end, RelayEnd::Shutdown));
    let calls = &registry_view.rpc_calls;
    assert_eq!(
        calls.with_label_values(&["h1", "remote", "other"]).get(),
        100
    );
    let series: usize = prometheus::core::Collector::collect(calls)
        .iter()
        .map(|family| family.get_metric().len())
        .sum();
    assert_eq!(series, 1, "one series, however many numbers were sent");
}

#[tokio::test(start_paused = true)]
async fn unknown_programs_are_answered_by_the_gateway_and_never_reach_the_host() {
    let (client_end, mut client) = pipe();
    let (host_end, mut host) = pipe();
    let m = metrics();
    let registry_view = m.clone();
    let token = CancellationToken::new();
    let stop = token.clone();
    let stats = tokio::spawn(async move {
        relay_as(
            Mode::Rw,
            client_end.into_inner(),
            host_end.into_inner(),
            &m,
            token,
        )
        .await
    });
    for serial in 0..50 {
        let made_up = call(Program::Other(0x1234), serial, serial, &[]);
        client.write_packet(&made_up).await.unwrap();
        let (h, payload) = next(&mut client).await;
        assert_eq!((h.serial, h.status), (serial, Status::Error));
        assert_eq!(error_of(&payload).code, ErrorNumber::OPERATION_DENIED);
    }
    client
        .write_packet(&call(Program::Remote, 59, 77, &[]))
        .await
        .unwrap();
    let (h, _) = next(&mut host).await;
    assert_eq!(
        h.serial, 77,
        "the first packet the host sees is the first allowed call"
    );
    stop.cancel();
    assert_eq!(stats.await.unwrap().calls, 1);
    let refused = registry_view.calls_refused.with_label_values(&["program"]);
    assert_eq!(refused.get(), 50);
}

#[tokio::test(start_paused = true)]
async fn a_read_only_identity_gets_libvirts_error_for_a_write_and_goes_on() {
    let (client_end, mut client) = pipe();
    let (host_end, mut host) = pipe();
    let m = metrics();
    let token = CancellationToken::new();
    let stop = token.clone();
    let stats = tokio::spawn(async move {
        relay_as(
            Mode::Ro,
            client_end.into_inner(),
            host_end.into_inner(),
            &m,
            token,
        )
        .await
    });
    // Pipelined in one write: an allowed call, a write, another allowed call.
    let mut burst = call(Program::Remote, 59, 1, &[]);
    burst.extend(call(Program::Remote, 34, 2, &[]));
    burst.extend(call(Program::Remote, 59, 3, &[]));
    client.get_mut().write_all(&burst).await.unwrap();
    let (refused, payload) = next(&mut client).await;
    assert_eq!((refused.serial, refused.status), (2, Status::Error));
    let error = error_of(&payload);
    assert_eq!(error.code, ErrorNumber::OPERATION_DENIED);
    assert!(error
        .message
        .unwrap()
        .contains("read only access prevents virDomainSuspend"));
    let serials = [
        next(&mut host).await.0.serial,
        next(&mut host).await.0.serial,
    ];
    assert_eq!(
        serials,
        [1, 3],
        "the write never reached the host; the rest did, in order"
    );
    for program in [Program::Qemu, Program::Lxc] {
        client
            .write_packet(&call(program, 1, 9, &[]))
            .await
            .unwrap();
        assert_eq!(next(&mut client).await.0.status, Status::Error);
    }
    stop.cancel();
    assert_eq!(stats.await.unwrap().calls, 2);
}

#[tokio::test(start_paused = true)]
async fn a_second_open_or_an_authentication_call_is_answered_and_the_connection_closed() {
    for (procedure, reason) in [
        (PROC_CONNECT_OPEN, crate::calls::RefusedCall::Reopen),
        (
            PROC_AUTH_SASL_START,
            crate::calls::RefusedCall::Authenticate,
        ),
        (419, crate::calls::RefusedCall::Identity),
    ] {
        let (client_end, mut client) = pipe();
        let (host_end, mut host) = pipe();
        let m = metrics();
        let token = CancellationToken::new();
        let stats = tokio::spawn(async move {
            relay_as(
                Mode::Rw,
                client_end.into_inner(),
                host_end.into_inner(),
                &m,
                token,
            )
            .await
        });
        let payload = match procedure {
            PROC_CONNECT_OPEN => open_call(5, "qemu:///system", 0)[28..].to_vec(),
            _ => Vec::new(),
        };
        client
            .write_packet(&call(Program::Remote, procedure, 5, &payload))
            .await
            .unwrap();
        let (h, _) = next(&mut client).await;
        assert_eq!((h.serial, h.status), (5, Status::Error), "{reason:?}");
        let stats = stats.await.unwrap();
        assert!(
            matches!(stats.end, RelayEnd::Refused(r) if r == reason),
            "{reason:?}"
        );
        assert_eq!(stats.calls, 0);
        assert!(
            host.read_packet(MAX_LEN).await.unwrap().is_none(),
            "the host saw nothing and its connection was closed"
        );
    }
}

#[test]
fn refusals_and_results_share_one_vocabulary_with_the_metrics() {
    let names: Vec<&str> = ConnectionResult::ALL.iter().map(|r| r.as_str()).collect();
    let mut unique = names.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), names.len());
    let m = metrics();
    for name in names {
        assert_eq!(m.connections_total.with_label_values(&[name]).get(), 0);
    }
}

#[tokio::test(start_paused = true)]
async fn a_client_that_does_not_read_the_open_reply_is_cut_off_within_the_write_timeout() {
    // A client whose receive window is full: the in-memory pipe holds 64 bytes.
    let (gateway_end, _client) = duplex(64);
    let mut gateway_end = PacketStream::new(gateway_end);
    let reply = packet(
        Header::call(Program::Remote, PROC_CONNECT_OPEN, 1).reply(Status::Ok),
        &[0; 4096],
    );
    let started = Instant::now();
    let limit = Duration::from_secs(60);
    let ended = super::hand_over_reply(&mut gateway_end, &reply, limit)
        .await
        .expect("the session ends");
    assert_eq!(ended.result, ConnectionResult::Closed);
    assert!(
        ended.detail.contains("did not read the CONNECT_OPEN reply"),
        "{}",
        ended.detail
    );
    assert!(started.elapsed() >= limit && started.elapsed() < limit * 2);
}

#[tokio::test(start_paused = true)]
async fn a_failed_open_is_handed_over_and_then_ends_the_session() {
    let (gateway_end, mut client) = pipe();
    let mut gateway_end = gateway_end;
    let refused = virtgate_rpc::error_reply(
        &Header::call(Program::Remote, PROC_CONNECT_OPEN, 1),
        ErrorNumber::NO_CONNECT,
        virtgate_rpc::ErrorDomain::FROM_REMOTE,
        "no connection driver available for xen:///",
    );
    let ended = super::hand_over_reply(&mut gateway_end, &refused, Duration::from_secs(60))
        .await
        .expect("a failed open ends the session");
    assert_eq!(ended.result, ConnectionResult::OpenFailed);
    assert!(ended.detail.contains("no connection driver available"));
    let (h, _) = next(&mut client).await;
    assert_eq!(
        h.status,
        Status::Error,
        "the client got the host's error first"
    );
    let ok = packet(
        Header::call(Program::Remote, PROC_CONNECT_OPEN, 1).reply(Status::Ok),
        &[],
    );
    let (gateway_end, _client) = pipe();
    let mut gateway_end = gateway_end;
    assert!(
        super::hand_over_reply(&mut gateway_end, &ok, Duration::from_secs(60))
            .await
            .is_none()
    );
}

mod passwords {
    //! The password logins, both ways, over in-memory streams: the front door as SCRAM server
    //! (real virsh and python3-libvirt in `tests/sasl_front.rs` stay the oracle), the gateway as
    //! SCRAM client of a host that demands SASL (real libvirtd in `tests/sasl_host.rs`).

    use std::net::IpAddr;
    use std::sync::{Arc, Mutex};

    use virtgate_rpc::remote::{
        SaslInitReply, SaslStartReply, SaslStepArgs, SaslStepReply, PROC_AUTH_SASL_INIT,
        PROC_AUTH_SASL_STEP,
    };

    use super::*;
    use crate::auth::scram::{self, ClientExchange, ClientFirst, ServerExchange, Verifier};
    use crate::auth::{
        ClientSecret, FailedLogins, HostCredentials, HostLogin, LoginLimits, Mechanism, Salted,
        Users,
    };
    use crate::session::host_login::HostSide;
    use crate::session::login::{FrontLogin, LOGIN_FAILED};
    use crate::session::preopen::until_open_with;

    const LIMITS: LoginLimits = LoginLimits {
        per_user: 3,
        per_source: 100,
        window: Duration::from_secs(300),
    };

    fn users() -> Arc<Users> {
        let alice = crate::auth::verifiers_for("correct horse").unwrap();
        Arc::new(Users::new([("alice".to_string(), alice)], b"fake key"))
    }

    fn source() -> IpAddr {
        [192, 0, 2, 7].into()
    }

    /// The front door's step: the open (or the error), the user who logged in, the metrics.
    type FrontDoorStep =
        tokio::task::JoinHandle<(Result<OpenRequest, String>, Option<String>, ProxyMetrics)>;

    /// A front door that wants a password; returns the client's end and the step's result
    /// (the open, and the user who logged in).
    fn front_door(failures: Arc<FailedLogins>) -> (PacketStream<DuplexStream>, FrontDoorStep) {
        let (client, mut gateway) = pipe();
        let m = metrics();
        let step = tokio::spawn(async move {
            let mut login = FrontLogin::new(users(), failures, m.clone(), source());
            let deadline = Instant::now() + Duration::from_secs(10);
            let open = until_open_with(&mut gateway, deadline, &m, Some(&mut login)).await;
            let user = login.user().map(String::from);
            (open.map_err(|e| e.detail), user, m)
        });
        (client, step)
    }

    async fn call_gateway(
        client: &mut PacketStream<DuplexStream>,
        procedure: u32,
        serial: u32,
        payload: &[u8],
    ) -> (Header, Vec<u8>) {
        client
            .write_packet(&call(Program::Remote, procedure, serial, payload))
            .await
            .unwrap();
        next(client).await
    }

    /// AUTH_LIST, INIT, START and STEP as virsh sends them; the STEP reply.
    async fn log_in(
        client: &mut PacketStream<DuplexStream>,
        user: &str,
        password: &str,
    ) -> (Header, Vec<u8>) {
        let (_, list) = call_gateway(client, PROC_AUTH_LIST, 1, &[]).await;
        let list = AuthListReply::decode(&mut Reader::new(&list)).unwrap();
        assert_eq!(list.0, vec![AuthType::Sasl], "a password is asked for");
        let (_, init) = call_gateway(client, PROC_AUTH_SASL_INIT, 2, &[]).await;
        let mechlist = SaslInitReply::decode(&mut Reader::new(&init))
            .unwrap()
            .mechlist;
        assert_eq!(
            mechlist, "SCRAM-SHA-256,SCRAM-SHA-512",
            "never PLAIN or ANONYMOUS"
        );
        let (exchange, first) = ClientExchange::start(Mechanism::Sha512, user, &scram::nonce());
        let start = SaslStartArgs {
            mech: "SCRAM-SHA-512".into(),
            data: Some(first),
        };
        let (h, reply) = call_gateway(client, PROC_AUTH_SASL_START, 3, &start.to_xdr()).await;
        assert_eq!(h.status, Status::Ok, "START is answered for any name");
        let server_first = SaslStartReply::decode(&mut Reader::new(&reply))
            .unwrap()
            .data
            .unwrap();
        let secret = ClientSecret {
            password: Some(password.into()),
            salted: vec![],
        };
        let (_, client_final) = exchange.respond(&server_first, &secret).unwrap();
        let step = SaslStepArgs {
            data: Some(client_final),
        };
        call_gateway(client, PROC_AUTH_SASL_STEP, 4, &step.to_xdr()).await
    }

    #[tokio::test]
    async fn a_user_logs_in_with_scram_and_the_open_is_handed_on_with_the_user() {
        let (mut client, step) = front_door(Arc::new(FailedLogins::new(LIMITS)));
        let (h, reply) = log_in(&mut client, "alice", "correct horse").await;
        assert_eq!(h.status, Status::Ok);
        let done = SaslStepReply::decode(&mut Reader::new(&reply)).unwrap();
        assert!(done.complete && done.data.unwrap().starts_with(b"v="));
        client
            .write_packet(&open_call(5, "qemu://h1/system", 0))
            .await
            .unwrap();
        let (open, user, _) = step.await.unwrap();
        assert_eq!(open.unwrap().header.serial, 5);
        assert_eq!(user.as_deref(), Some("alice"));
    }

    #[tokio::test]
    async fn an_unknown_user_and_a_wrong_password_get_one_and_the_same_reply_and_the_end() {
        let mut replies = Vec::new();
        for (user, password) in [("alice", "wrong"), ("mallory", "correct horse")] {
            let (mut client, step) = front_door(Arc::new(FailedLogins::new(LIMITS)));
            let (h, reply) = log_in(&mut client, user, password).await;
            assert_eq!(h.status, Status::Error);
            let error = error_of(&reply);
            assert_eq!(error.code, ErrorNumber::AUTH_FAILED);
            assert_eq!(error.message.as_deref(), Some(LOGIN_FAILED));
            replies.push(reply);
            assert!(
                client.read_packet(MAX_LEN).await.unwrap().is_none(),
                "closed"
            );
            let (open, user, m) = step.await.unwrap();
            assert!(open.unwrap_err().contains("password login failed"));
            assert_eq!(user, None);
            let failed = |reason| m.auth_failures.with_label_values(&["sasl", reason]).get();
            assert_eq!(failed("unknown_user") + failed("wrong_password"), 1);
        }
        assert_eq!(replies[0], replies[1], "byte for byte");
    }

    #[tokio::test]
    async fn an_unknown_name_is_answered_with_the_same_salt_every_time() {
        let mut salts = Vec::new();
        for _ in 0..2 {
            let (mut client, _step) = front_door(Arc::new(FailedLogins::new(LIMITS)));
            call_gateway(&mut client, PROC_AUTH_SASL_INIT, 2, &[]).await;
            let (_, first) = ClientExchange::start(Mechanism::Sha256, "mallory", "abc");
            let start = SaslStartArgs {
                mech: "SCRAM-SHA-256".into(),
                data: Some(first),
            };
            let (_, reply) =
                call_gateway(&mut client, PROC_AUTH_SASL_START, 3, &start.to_xdr()).await;
            let data = SaslStartReply::decode(&mut Reader::new(&reply))
                .unwrap()
                .data
                .unwrap();
            let text = String::from_utf8(data).unwrap();
            salts.push(text.split_once(",s=").unwrap().1.to_string());
        }
        assert_eq!(salts[0], salts[1]);
        assert!(
            salts[0].ends_with(",i=4096"),
            "the real users' count: {}",
            salts[0]
        );
    }

    #[tokio::test]
    async fn after_too_many_failures_even_the_right_password_is_refused_the_same_way() {
        let failures = Arc::new(FailedLogins::new(LIMITS));
        for _ in 0..3 {
            let (mut client, _) = front_door(failures.clone());
            log_in(&mut client, "alice", "wrong").await;
        }
        let (mut client, _) = front_door(failures);
        call_gateway(&mut client, PROC_AUTH_SASL_INIT, 2, &[]).await;
        let (_, first) = ClientExchange::start(Mechanism::Sha256, "alice", "abc");
        let start = SaslStartArgs {
            mech: "SCRAM-SHA-256".into(),
            data: Some(first),
        };
        let (h, reply) = call_gateway(&mut client, PROC_AUTH_SASL_START, 3, &start.to_xdr()).await;
        assert_eq!(h.status, Status::Error);
        assert_eq!(error_of(&reply).message.as_deref(), Some(LOGIN_FAILED));
    }

    #[tokio::test]
    async fn an_open_before_the_login_is_refused_with_what_to_do_and_ends_the_connection() {
        let (mut client, step) = front_door(Arc::new(FailedLogins::new(LIMITS)));
        client
            .write_packet(&open_call(1, "qemu://h1/system", 0))
            .await
            .unwrap();
        let (h, reply) = next(&mut client).await;
        assert_eq!(h.status, Status::Error);
        assert!(error_of(&reply).message.unwrap().contains("openAuth"));
        let (open, _, m) = step.await.unwrap();
        assert!(open.is_err());
        assert_eq!(
            m.auth_failures
                .with_label_values(&["sasl", "no_login"])
                .get(),
            1
        );
    }

    /// Host credentials in memory, recording what the gateway learned.
    struct Credentials {
        login: Option<HostLogin>,
        learned: Mutex<Vec<Salted>>,
    }

    impl HostCredentials for Credentials {
        fn login(&self, _host: &str) -> Option<HostLogin> {
            self.login.clone()
        }
        fn learned(&self, _host: &str, _user: &str, salted: &Salted) {
            self.learned.lock().unwrap().push(salted.clone());
        }
    }

    /// A host that demands SASL SCRAM-SHA-256 for `user` with `verifier`, as cyrus does: an
    /// unknown user fails at START, a wrong password at STEP (45).
    async fn sasl_host(
        mut host: PacketStream<DuplexStream>,
        user: &'static str,
        verifier: Verifier,
    ) -> Vec<ConnectOpenArgs> {
        let mut opens = Vec::new();
        let mut exchange: Option<ServerExchange> = None;
        while let Ok(Some(bytes)) = host.read_packet(MAX_LEN).await {
            let p = Packet::parse(bytes).unwrap();
            let (h, payload) = (p.header, p.payload.to_vec());
            let failed = || {
                virtgate_rpc::error_reply(
                    &h,
                    ErrorNumber::AUTH_FAILED,
                    virtgate_rpc::ErrorDomain::FROM_RPC,
                    "authentication failed: authentication failed",
                )
            };
            let reply = match h.procedure {
                PROC_AUTH_LIST => ok_reply(&h, &AuthListReply(vec![AuthType::Sasl])),
                PROC_AUTH_SASL_INIT => ok_reply(
                    &h,
                    &SaslInitReply {
                        mechlist: "SCRAM-SHA-256".into(),
                    },
                ),
                PROC_AUTH_SASL_START => {
                    let args = SaslStartArgs::decode(&mut Reader::new(&payload)).unwrap();
                    let first = ClientFirst::parse(&args.data.unwrap()).unwrap();
                    if first.user != user {
                        failed()
                    } else {
                        let (e, server_first) =
                            ServerExchange::start(&first, verifier.clone(), "host-nonce");
                        exchange = Some(e);
                        ok_reply(
                            &h,
                            &SaslStartReply {
                                complete: false,
                                data: Some(server_first),
                            },
                        )
                    }
                }
                PROC_AUTH_SASL_STEP => {
                    let args = SaslStepArgs::decode(&mut Reader::new(&payload)).unwrap();
                    match exchange.take().unwrap().finish(&args.data.unwrap()) {
                        Ok(v) => ok_reply(
                            &h,
                            &SaslStepReply {
                                complete: true,
                                data: Some(v),
                            },
                        ),
                        Err(_) => failed(),
                    }
                }
                PROC_CONNECT_OPEN => {
                    opens.push(ConnectOpenArgs::decode(&mut Reader::new(&payload)).unwrap());
                    packet(h.reply(Status::Ok), &[])
                }
                _ => continue,
            };
            host.write_packet(&reply).await.unwrap();
        }
        opens
    }

    fn host_verifier() -> Verifier {
        Verifier::from_password(Mechanism::Sha256, "host secret", b"stable salt", 4096).unwrap()
    }

    async fn open_sasl_host(
        credentials: &Credentials,
    ) -> (Result<(), Refusal>, Vec<ConnectOpenArgs>, ProxyMetrics) {
        let (gateway_end, host_end) = pipe();
        let host = tokio::spawn(sasl_host(host_end, "nova", host_verifier()));
        let m = metrics();
        let side = HostSide {
            credentials,
            metrics: &m,
        };
        let opened = backend::open(
            gateway_end.into_inner(),
            &admitted(Mode::Rw),
            &open_request(false),
            Duration::from_secs(5),
            Some(side),
        )
        .await
        .map(drop);
        (opened, host.await.unwrap(), m)
    }

    use super::super::outcome::Refusal;

    fn login(user: &str, password: Option<&str>, salted: Vec<Salted>) -> Credentials {
        Credentials {
            login: Some(HostLogin {
                user: user.into(),
                secret: ClientSecret {
                    password: password.map(String::from),
                    salted,
                },
            }),
            learned: Mutex::default(),
        }
    }

    #[tokio::test]
    async fn the_gateway_logs_in_to_a_sasl_host_then_forwards_the_open_and_keeps_the_salted_password(
    ) {
        let credentials = login("nova", Some("host secret"), vec![]);
        let (opened, opens, _) = open_sasl_host(&credentials).await;
        opened.unwrap_or_else(|r| panic!("refused: {r:?}"));
        assert_eq!(opens.len(), 1, "CONNECT_OPEN after the login");
        let learned = credentials.learned.lock().unwrap().clone();
        assert_eq!(learned.len(), 1);
        assert_eq!(learned[0].salt, b"stable salt");

        // With only the SaltedPassword it logs in again, and learns nothing new.
        let again = login("nova", None, learned);
        let (opened, opens, _) = open_sasl_host(&again).await;
        opened.unwrap();
        assert_eq!(opens.len(), 1);
        assert!(again.learned.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn wrong_host_credentials_are_a_clear_error_counted_once_and_the_open_never_reaches_the_host(
    ) {
        for credentials in [
            login("nova", Some("wrong"), vec![]),
            login("glance", Some("host secret"), vec![]),
        ] {
            let (opened, opens, m) = open_sasl_host(&credentials).await;
            let refusal = opened.unwrap_err();
            assert_eq!(refusal.result, ConnectionResult::BackendLoginFailed);
            assert!(
                refusal.message.contains("virtgate hosts credentials h1"),
                "{}",
                refusal.message
            );
            assert!(!refusal.message.contains("wrong") || !refusal.message.contains("host secret"));
            assert!(opens.is_empty(), "no CONNECT_OPEN reached the host");
            assert_eq!(
                m.backend_login_failures
                    .with_label_values(&["rejected"])
                    .get(),
                1
            );
        }
    }
}
