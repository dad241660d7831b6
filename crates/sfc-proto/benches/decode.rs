//! Frame decoding throughput: a stream of 828 packets fed to [`RequestDecoder`] in 64 KiB
//! reads, as the server does. Run: `cargo bench -p sfc-proto`.
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "benchmark code: a failure aborts the run, which is the wanted outcome"
)]

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sfc_proto::{ClientId, FilePacketHeader, Name, RequestDecoder, RequestEvent};
use std::hint::black_box;

fn stream_of_packets(content_per_packet: usize, packets: u16) -> Vec<u8> {
    let total = content_per_packet * packets as usize;
    let mut bytes = Vec::with_capacity(total + packets as usize * 290);
    for number in 1..=packets {
        let header = FilePacketHeader {
            content_size: total as u32,
            orig_file_size: (total - 1) as u32,
            packet_number: number,
            total_packets: packets,
            file_name: Name::new("bench.bin").unwrap(),
        };
        bytes
            .extend_from_slice(&header.encode_prefix(ClientId([1; 16]), content_per_packet as u32));
        bytes.resize(bytes.len() + content_per_packet, 0xa5);
    }
    bytes
}

fn decode_all(stream: &[u8], read_size: usize) -> usize {
    let mut decoder = RequestDecoder::new();
    let mut content = 0;
    for read in stream.chunks(read_size) {
        let mut rest = read;
        loop {
            let (used, event) = decoder.decode(rest).unwrap();
            rest = &rest[used..];
            match event {
                Some(RequestEvent::Content(piece)) => content += black_box(piece).len(),
                Some(_) => {}
                None => break,
            }
        }
    }
    content
}

fn bench_decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode_828_stream");
    for content_per_packet in [2048usize, 65536] {
        let packets = (8 << 20) / content_per_packet;
        let stream = stream_of_packets(content_per_packet, packets as u16);
        group.throughput(Throughput::Bytes(stream.len() as u64));
        group.bench_function(format!("packet_{content_per_packet}"), |b| {
            b.iter(|| decode_all(&stream, 64 * 1024))
        });
    }
    group.finish();
}

criterion_group!(benches, bench_decode);
criterion_main!(benches);
