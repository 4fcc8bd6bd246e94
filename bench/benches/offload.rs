//! Finishing a checksum a pod left to transmit offload, per frame, at 64 B, 1500 B and 9000 B.

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use pipeline::wire::checksum;

/// An Ethernet/IPv4/TCP frame of `size` bytes whose TCP checksum holds only the pseudo-header
/// sum, as a pod with transmit checksum offload sends it.
fn partial_frame(size: usize) -> Vec<u8> {
    let payload = vec![0xa5u8; size - 14 - 20 - 20];
    let mut f = Vec::new();
    etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 1, 2], [2, 0, 0, 0, 1, 3])
        .ipv4([10, 244, 1, 2], [10, 244, 1, 3], 64)
        .tcp(40000, 80, 1, 64000)
        .ack(1)
        .write(&mut f, &payload)
        .unwrap();
    let l4_len = (size - 34) as u16;
    let pseudo = checksum::fold(checksum::pseudo_header(
        [10, 244, 1, 2],
        [10, 244, 1, 3],
        6,
        l4_len,
    ));
    f[34 + 16..34 + 18].copy_from_slice(&pseudo.to_be_bytes());
    f
}

fn complete(c: &mut Criterion) {
    let mut g = c.benchmark_group("complete_partial_checksum");
    for size in [64usize, 1500, 9000] {
        let template = partial_frame(size);
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(format!("{size}B"), |b| {
            b.iter_batched_ref(
                || template.clone(),
                |frame| black_box(pipeline::offload::complete(frame)),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, complete);
criterion_main!(benches);
