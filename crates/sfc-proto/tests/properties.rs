//! Property tests: every message type round-trips, the incremental decoder gives the same
//! result however the stream is split, and no byte sequence makes decoding panic.
#![cfg(test)]

use proptest::prelude::*;
use sfc_proto::limits::{NAME_FIELD_LEN, REQUEST_HEADER_LEN};
use sfc_proto::{
    encrypted_size, ClientId, DecodeError, FilePacketHeader, Name, Request, RequestBody,
    RequestDecoder, RequestEvent, Response, ResponseHeader,
};

fn name() -> impl Strategy<Value = Name> {
    proptest::string::string_regex("[ -~]{1,254}")
        .unwrap()
        .prop_map(|s| Name::new(&s).unwrap())
}

fn client_id() -> impl Strategy<Value = ClientId> {
    any::<[u8; 16]>().prop_map(ClientId)
}

/// A self-consistent 828: content_size is either the whole encrypted size (content no
/// longer than it) or this packet's own length (docs/PROTOCOL.md, rule S4).
fn file_packet() -> impl Strategy<Value = (FilePacketHeader, Vec<u8>)> {
    (
        0u32..100_000,
        1u16..=u16::MAX,
        any::<u16>(),
        name(),
        proptest::collection::vec(any::<u8>(), 0..600),
        any::<bool>(),
    )
        .prop_map(
            |(orig, total, number_seed, file_name, mut content, whole)| {
                let content_size = if whole {
                    let size = encrypted_size(u64::from(orig)) as u32;
                    content.truncate(size as usize);
                    size
                } else {
                    content.len() as u32
                };
                let packet = FilePacketHeader {
                    content_size,
                    orig_file_size: orig,
                    packet_number: number_seed % total + 1,
                    total_packets: total,
                    file_name,
                };
                (packet, content)
            },
        )
}

fn request_body() -> impl Strategy<Value = RequestBody> {
    prop_oneof![
        name().prop_map(|name| RequestBody::Register { name }),
        (name(), proptest::collection::vec(any::<u8>(), 1..=1024))
            .prop_map(|(name, public_key)| RequestBody::SendPublicKey { name, public_key }),
        name().prop_map(|name| RequestBody::Reconnect { name }),
        file_packet().prop_map(|(packet, content)| RequestBody::SendFile { packet, content }),
        name().prop_map(|file_name| RequestBody::ChecksumOk { file_name }),
        name().prop_map(|file_name| RequestBody::ChecksumRetry { file_name }),
        name().prop_map(|file_name| RequestBody::ChecksumFailed { file_name }),
    ]
}

fn response() -> impl Strategy<Value = Response> {
    prop_oneof![
        client_id().prop_map(|client_id| Response::Registered { client_id }),
        Just(Response::RegistrationFailed),
        (client_id(), proptest::collection::vec(any::<u8>(), 1..=512)).prop_map(
            |(client_id, wrapped_key)| Response::PublicKeyAccepted {
                client_id,
                wrapped_key
            }
        ),
        (client_id(), any::<u32>(), name(), any::<u32>()).prop_map(
            |(client_id, content_size, file_name, cksum)| Response::FileReceived {
                client_id,
                content_size,
                file_name,
                cksum
            }
        ),
        client_id().prop_map(|client_id| Response::PacketReceived { client_id }),
        proptest::option::of(client_id()).prop_map(|client_id| Response::Ack { client_id }),
        (client_id(), proptest::collection::vec(any::<u8>(), 1..=512)).prop_map(
            |(client_id, wrapped_key)| Response::ReconnectAccepted {
                client_id,
                wrapped_key
            }
        ),
        proptest::option::of(client_id())
            .prop_map(|client_id| Response::ReconnectRejected { client_id }),
        Just(Response::ServerError),
    ]
}

/// Decodes a stream split at the given cut points; returns whole requests (828 content
/// reassembled) and invalid-request errors, or the framing error that stopped it.
fn decode_stream(
    bytes: &[u8],
    cuts: &[usize],
) -> (Vec<Result<Request, DecodeError>>, Option<DecodeError>) {
    let mut decoder = RequestDecoder::new();
    let mut out = Vec::new();
    let mut file: Option<(ClientId, u8, FilePacketHeader, Vec<u8>)> = None;
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    points.push(0);
    points.push(bytes.len());
    points.sort_unstable();
    points.dedup();
    for window in points.windows(2) {
        let mut rest = &bytes[window[0]..window[1]];
        loop {
            let (used, event) = match decoder.decode(rest) {
                Ok(v) => v,
                Err(e) => return (out, Some(e)),
            };
            rest = &rest[used..];
            match event {
                Some(RequestEvent::Request(r)) => out.push(Ok(r)),
                Some(RequestEvent::Invalid { error, .. }) => out.push(Err(error)),
                Some(RequestEvent::FilePacket { header, packet, .. }) => {
                    file = Some((header.client_id, header.version, packet, Vec::new()))
                }
                Some(RequestEvent::Content(piece)) => {
                    // None: an invalid 828's content, dropped.
                    if let Some(file) = file.as_mut() {
                        file.3.extend_from_slice(piece)
                    }
                }
                Some(RequestEvent::FilePacketEnd) => {
                    let (client_id, version, packet, content) = file.take().unwrap();
                    out.push(Ok(Request {
                        client_id,
                        version,
                        body: RequestBody::SendFile { packet, content },
                    }));
                }
                None => break,
            }
        }
    }
    (out, None)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn requests_round_trip(id in client_id(), body in request_body()) {
        let request = Request::new(id, body);
        let bytes = request.encode();
        prop_assert_eq!(bytes.len(), REQUEST_HEADER_LEN + request.body.payload_len());
        prop_assert_eq!(Request::decode(&bytes), Ok(request));
    }

    #[test]
    fn responses_round_trip(response in response()) {
        prop_assert_eq!(Response::decode(&response.encode()), Ok(response));
    }

    #[test]
    fn left_padded_names_decode_like_right_padded(n in name()) {
        prop_assert_eq!(Name::decode_field(&n.encode_field_left_padded()), Ok(n.clone()));
        prop_assert_eq!(Name::decode_field(&n.encode_field()), Ok(n));
    }

    #[test]
    fn stream_splits_do_not_change_the_result(
        bodies in proptest::collection::vec(request_body(), 1..6),
        cuts in proptest::collection::vec(any::<usize>(), 0..20),
    ) {
        let requests: Vec<Request> = bodies.into_iter().map(|b| Request::new(ClientId([3; 16]), b)).collect();
        let stream: Vec<u8> = requests.iter().flat_map(|r| r.encode()).collect();
        let (decoded, error) = decode_stream(&stream, &cuts);
        prop_assert_eq!(error, None);
        let expected: Vec<Result<Request, DecodeError>> = requests.into_iter().map(Ok).collect();
        prop_assert_eq!(decoded, expected);
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_splits_agree(
        bytes in proptest::collection::vec(any::<u8>(), 0..2000),
        cuts in proptest::collection::vec(any::<usize>(), 0..10),
    ) {
        let _ = Request::decode(&bytes);
        let _ = Response::decode(&bytes);
        let whole = decode_stream(&bytes, &[]);
        let split = decode_stream(&bytes, &cuts);
        prop_assert_eq!(whole, split);
    }

    #[test]
    fn mutated_valid_requests_never_panic(
        body in request_body(),
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
    ) {
        let mut bytes = Request::new(ClientId::ZERO, body).encode();
        for (pos, value) in flips {
            let len = bytes.len();
            bytes[pos % len] = value;
        }
        let _ = decode_stream(&bytes, &[]);
        let _ = Request::decode(&bytes);
    }

    #[test]
    fn response_headers_never_announce_more_than_the_limit(bytes in any::<[u8; 7]>()) {
        if let Ok(header) = ResponseHeader::decode(&bytes) {
            prop_assert!(header.payload_size as usize <= sfc_proto::limits::MAX_RESPONSE_PAYLOAD);
        }
    }
}

#[test]
fn every_request_decode_error_is_reachable() {
    let good = Request::new(
        ClientId::ZERO,
        RequestBody::Register {
            name: Name::new("a").unwrap(),
        },
    )
    .encode();
    // TooShort
    assert!(matches!(
        Request::decode(&good[..10]),
        Err(DecodeError::TooShort { .. })
    ));
    // TrailingBytes
    let mut long = good.clone();
    long.push(1);
    assert_eq!(
        Request::decode(&long),
        Err(DecodeError::TrailingBytes { extra: 1 })
    );
    // UnknownRequestCode
    let mut unknown = good.clone();
    unknown[17..19].copy_from_slice(&999u16.to_le_bytes());
    assert_eq!(
        Request::decode(&unknown),
        Err(DecodeError::UnknownRequestCode(999))
    );
    // PayloadSize
    let mut size = good.clone();
    size[19..23].copy_from_slice(&254u32.to_le_bytes());
    assert!(matches!(
        Request::decode(&size),
        Err(DecodeError::PayloadSize {
            code: 825,
            actual: 254,
            ..
        })
    ));
    // Name: empty, interior NUL, non-printable, too long
    for (field, expect) in [
        (vec![0u8; NAME_FIELD_LEN], "empty"),
        ([b"a\0b".as_slice(), &[0u8; 252]].concat(), "NUL"),
        (
            [b"a\x01b".as_slice(), &[0u8; 252]].concat(),
            "non-printable",
        ),
        (vec![b'z'; NAME_FIELD_LEN], "254"),
    ] {
        let mut bytes = good[..REQUEST_HEADER_LEN].to_vec();
        bytes.extend(field);
        let error = Request::decode(&bytes).unwrap_err();
        assert!(
            matches!(error, DecodeError::Name { field: "name", .. }),
            "{error:?}"
        );
        assert!(error.to_string().contains(expect), "{error}");
    }
    // Packet: inconsistent fixed part
    let packet = FilePacketHeader {
        content_size: 16,
        orig_file_size: 1,
        packet_number: 2,
        total_packets: 1,
        file_name: Name::new("f").unwrap(),
    };
    let mut bytes = packet.encode_prefix(ClientId::ZERO, 16).to_vec();
    bytes.extend([0u8; 16]);
    assert!(matches!(
        Request::decode(&bytes),
        Err(DecodeError::Packet(_))
    ));
    // UnknownResponseCode
    assert_eq!(
        Response::decode(&[3, 0, 0, 0, 0, 0, 0]),
        Err(DecodeError::UnknownResponseCode(0))
    );
}
