//! The L2 stage over batches of 64 frames, with 1,000 learned MACs, and FDB scaling.

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use pipeline::{Bridge, BridgeConfig, Disposition, MacAddr, MAX_BATCH};

fn mac(n: u32) -> MacAddr {
    let b = n.to_be_bytes();
    MacAddr([0x02, 0x00, b[0], b[1], b[2], b[3]])
}

fn frame(dst: MacAddr, src: MacAddr) -> Vec<u8> {
    let mut bytes = Vec::new();
    etherparse::PacketBuilder::ethernet2(src.0, dst.0)
        .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
        .udp(1000, 2000)
        .write(&mut bytes, &[0u8; 18])
        .unwrap();
    bytes
}

/// A bridge that has learned `macs` addresses spread over 4 ports, and batches of frames
/// between random pairs of them.
fn setup(macs: u32) -> (Bridge, Vec<Vec<Vec<u8>>>) {
    let mut bridge = Bridge::new(&BridgeConfig {
        fdb_capacity: macs as usize * 2,
        // The benchmark measures lookups in a big table, not the per-port limit.
        fdb_port_limit: macs as usize,
        ..Default::default()
    });
    let mut next = [Disposition::Drop; MAX_BATCH];
    for m in 0..macs {
        bridge.process(
            &[frame(MacAddr::BROADCAST, mac(m))],
            (m % 4) as u16,
            0,
            &mut next[..1],
        );
    }
    // Deterministic pseudo-random pairs; ingress port 0 carries sources learned on port 0.
    let mut x = 0x9e37_79b9u32;
    let mut step = || {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x
    };
    let batches = (0..16)
        .map(|_| {
            (0..MAX_BATCH)
                .map(|_| {
                    let src = (step() % (macs / 4)) * 4;
                    let dst = step() % macs;
                    frame(mac(dst), mac(src))
                })
                .collect()
        })
        .collect();
    (bridge, batches)
}

fn l2_stage(c: &mut Criterion) {
    let mut group = c.benchmark_group("l2_stage");
    group.throughput(Throughput::Elements(MAX_BATCH as u64));
    for macs in [1_000u32, 100_000, 1_000_000] {
        let (mut bridge, batches) = setup(macs);
        let mut next = [Disposition::Drop; MAX_BATCH];
        let mut i = 0;
        group.bench_function(format!("batch64_{macs}_macs"), |b| {
            b.iter(|| {
                let batch = &batches[i % batches.len()];
                i += 1;
                bridge.process(black_box(batch), 0, 1_000, &mut next);
                black_box(&next);
            })
        });
    }
    group.finish();

    c.bench_function("fdb_aging_sweep_1000", |b| {
        b.iter_batched(
            || setup(1_000).0,
            |mut bridge| bridge.housekeeping(1_000_000),
            BatchSize::LargeInput,
        )
    });
}

criterion_group!(benches, l2_stage);
criterion_main!(benches);
