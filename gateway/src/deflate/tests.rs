use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::{Data, OpCode};

use super::*;

/// Inflates one whole message as a client (RFC 7692 §7.2.2: the dropped tail added back).
fn inflate_message(payload: &[u8]) -> Vec<u8> {
    let mut d = Decompress::new(false);
    let mut input = payload.to_vec();
    input.extend_from_slice(&SYNC_TAIL);
    let mut out = Vec::with_capacity(1 << 20);
    d.decompress_vec(&input, &mut out, FlushDecompress::Sync)
        .unwrap_or_else(|e| panic!("{e}"));
    out
}

#[test]
fn segments_concatenate_into_one_message_any_inflater_reads() {
    let records: Vec<Bytes> = (0..50)
        .map(|i| {
            Bytes::from(format!(
                r#"{{"offset":{i},"value":{{"user":"u{i}","kind":"click"}}}}"#
            ))
        })
        .collect();
    let chunk = Chunk::new(records[..20].to_vec());
    let later = Chunk::new(records[20..].to_vec());
    let prefix = Segment::of(&[br#"{"type":"records","id":"a","records":["#]);
    let payload = message(&[
        &prefix,
        chunk.segment(false),
        later.segment(true),
        records_suffix(),
    ]);
    assert!(!payload.ends_with(&SYNC_TAIL), "the tail is dropped");
    let plain =
        crate::protocol::records_frame("a", &records.iter().map(|r| &r[..]).collect::<Vec<_>>());
    assert_eq!(
        String::from_utf8(inflate_message(&payload)).ok(),
        Some(plain.clone())
    );
    assert!(
        payload.len() * 3 < plain.len(),
        "{} compressed bytes for {}",
        payload.len(),
        plain.len()
    );
    // Made once: the same bytes for the next subscription.
    assert!(std::ptr::eq(chunk.segment(false), chunk.segment(false)));
}

#[test]
fn offers_accepted_declined_and_refused_whole() {
    let one = |h: &str| negotiate([h]);
    // What Chromium and Firefox offer.
    assert_eq!(
        one("permessage-deflate; client_max_window_bits"),
        Some(RESPONSE)
    );
    assert_eq!(one("permessage-deflate"), Some(RESPONSE));
    assert_eq!(
        one("permessage-deflate; server_no_context_takeover; client_no_context_takeover"),
        Some(RESPONSE)
    );
    assert_eq!(
        one("permessage-deflate; client_max_window_bits=10"),
        Some(RESPONSE)
    );
    assert_eq!(
        one(r#"permessage-deflate; server_max_window_bits="15""#),
        Some(
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
             server_max_window_bits=15"
        )
    );
    // Offers the gateway cannot honour exactly are declined, not half-accepted.
    for declined in [
        "permessage-deflate; server_max_window_bits=10",
        "permessage-deflate; server_max_window_bits",
        "permessage-deflate; server_max_window_bits=16",
        "permessage-deflate; client_max_window_bits=7",
        "permessage-deflate; client_max_window_bits=015",
        "permessage-deflate; client_max_window_bits=x",
        "permessage-deflate; server_no_context_takeover=1",
        "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
        "permessage-deflate; mystery",
        r#"permessage-deflate; client_max_window_bits="15"#,
        "x-webkit-deflate-frame",
        "",
    ] {
        assert_eq!(one(declined), None, "{declined:?}");
    }
    // The first acceptable offer of several, over several headers.
    assert_eq!(
        negotiate([
            "permessage-deflate; server_max_window_bits=9",
            "foo, permessage-deflate; client_max_window_bits",
        ]),
        Some(RESPONSE)
    );
    assert_eq!(negotiate(Vec::<&str>::new()), None);
}

/// A compressed frame as a client sends it: masked, RSV1 on the first frame only.
fn client_frames(message: &[u8], opcode: Data, split: usize) -> Vec<u8> {
    let mut c = Compress::new(Compression::default(), false);
    let mut body = Vec::with_capacity(message.len() + 64);
    c.compress_vec(message, &mut body, FlushCompress::Sync)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(body.ends_with(&SYNC_TAIL));
    body.truncate(body.len() - 4);
    let mask = [0x11, 0x22, 0x33, 0x44];
    let mut out = Vec::new();
    let pieces: Vec<&[u8]> = if split == 0 {
        vec![&body[..]]
    } else {
        body.chunks(split).collect()
    };
    for (i, piece) in pieces.iter().enumerate() {
        let header = FrameHeader {
            is_final: i + 1 == pieces.len(),
            rsv1: i == 0,
            opcode: if i == 0 {
                OpCode::Data(opcode)
            } else {
                OpCode::Data(Data::Continue)
            },
            mask: Some(mask),
            ..FrameHeader::default()
        };
        header
            .format(piece.len() as u64, &mut out)
            .unwrap_or_else(|e| panic!("{e}"));
        out.extend(piece.iter().enumerate().map(|(j, b)| b ^ mask[j % 4]));
    }
    out
}

/// What tungstenite reads through the adapter from `wire`: the messages, or the error.
async fn server_reads(
    wire: Vec<u8>,
    limit: usize,
) -> (Vec<tungstenite::Message>, Option<tungstenite::Error>) {
    use futures_util::StreamExt as _;
    let (mut client, server) = tokio::io::duplex(1 << 20);
    client
        .write_all(&wire)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // End of the client's stream, its side still open for the pongs tungstenite sends.
    client.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
    let config = crate::http::ws_config(limit);
    let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
        Inflating::new(server, true, limit),
        tungstenite::protocol::Role::Server,
        Some(config),
    )
    .await;
    let mut got = Vec::new();
    while let Some(m) = ws.next().await {
        match m {
            Ok(m) => got.push(m),
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => break,
            Err(tungstenite::Error::Protocol(
                tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
            )) => break,
            Err(e) => return (got, Some(e)),
        }
    }
    (got, None)
}

#[tokio::test]
async fn compressed_client_messages_arrive_inflated_between_plain_frames() {
    let subscribe = br#"{"op":"subscribe","id":"a","topic":"orders","from":"latest"}"#;
    let mut wire = client_frames(subscribe, Data::Text, 0);
    // A plain ping and a plain text message between compressed ones.
    wire.extend(ping_frame());
    let mut plain = Vec::new();
    FrameHeader {
        opcode: OpCode::Data(Data::Text),
        mask: Some([0; 4]),
        ..FrameHeader::default()
    }
    .format(4, &mut plain)
    .unwrap_or_else(|e| panic!("{e}"));
    plain.extend_from_slice(b"\"hi\"");
    wire.extend(plain);
    // A large message (several inflated chunks) in several frames.
    let big: Vec<u8> = (0..40_000u32)
        .flat_map(|i| format!("{},", i % 97).into_bytes())
        .collect();
    wire.extend(client_frames(&big, Data::Binary, 700));
    let (got, err) = server_reads(wire, 1 << 20).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(got.len(), 4, "{got:?}");
    assert_eq!(
        got[0],
        tungstenite::Message::text(String::from_utf8_lossy(subscribe).into_owned())
    );
    assert!(got[1].is_ping());
    assert_eq!(got[2], tungstenite::Message::text("\"hi\""));
    assert_eq!(got[3], tungstenite::Message::binary(big));
}

fn ping_frame() -> Vec<u8> {
    let mut out = Vec::new();
    FrameHeader {
        opcode: OpCode::Control(tungstenite::protocol::frame::coding::Control::Ping),
        mask: Some([1, 2, 3, 4]),
        ..FrameHeader::default()
    }
    .format(0, &mut out)
    .unwrap_or_else(|e| panic!("{e}"));
    out
}

#[tokio::test]
async fn a_deflate_bomb_is_cut_at_the_limit() {
    // 64 MiB of zeros compress to ~64 KiB; the limit is 64 KiB inflated.
    let bomb = vec![b'0'; 64 << 20];
    let wire = client_frames(&bomb, Data::Text, 0);
    assert!(wire.len() < 128 << 10, "{}", wire.len());
    let (got, err) = server_reads(wire, 64 << 10).await;
    assert!(got.is_empty());
    assert!(
        matches!(err, Some(tungstenite::Error::Capacity(_))),
        "{err:?}: tungstenite refuses it as too big (1009)"
    );
}

#[tokio::test]
async fn rsv1_without_deflate_or_on_a_control_frame_is_a_protocol_error() {
    let msg = client_frames(b"hello", Data::Text, 0);
    // Deflate not agreed: the adapter is off and tungstenite sees RSV1.
    let (mut client, server) = tokio::io::duplex(1 << 16);
    client
        .write_all(&msg)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    drop(client);
    let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
        Inflating::new(server, false, 1 << 16),
        tungstenite::protocol::Role::Server,
        None,
    )
    .await;
    use futures_util::StreamExt as _;
    assert!(matches!(
        ws.next().await,
        Some(Err(tungstenite::Error::Protocol(
            tungstenite::error::ProtocolError::NonZeroReservedBits
        )))
    ));
    // Agreed, but RSV1 on a ping.
    let mut ping = ping_frame();
    ping[0] |= 0x40;
    let (_, err) = server_reads(ping, 1 << 16).await;
    assert!(
        matches!(
            err,
            Some(tungstenite::Error::Protocol(
                tungstenite::error::ProtocolError::NonZeroReservedBits
            ))
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn data_that_does_not_inflate_fails_with_bad_deflate() {
    let mut wire = Vec::new();
    FrameHeader {
        rsv1: true,
        opcode: OpCode::Data(Data::Text),
        mask: Some([0; 4]),
        ..FrameHeader::default()
    }
    .format(6, &mut wire)
    .unwrap_or_else(|e| panic!("{e}"));
    // BTYPE 11 is reserved: not deflate.
    wire.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
    let (got, err) = server_reads(wire, 1 << 16).await;
    assert!(got.is_empty());
    let Some(tungstenite::Error::Io(e)) = err else {
        panic!("{err:?}");
    };
    assert!(e.get_ref().is_some_and(|i| i.is::<BadDeflate>()), "{e}");
}

#[tokio::test]
async fn off_it_is_the_bare_socket() {
    let (mut a, b) = tokio::io::duplex(64);
    let mut i = Inflating::new(b, false, 10);
    a.write_all(b"\x81\xc5abc")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut buf = [0u8; 5];
    i.read_exact(&mut buf)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(&buf, b"\x81\xc5abc");
}
