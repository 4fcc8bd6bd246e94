//! Arbitrary bytes on any port never panic the pipeline.

use pipeline::{Bridge, BridgeConfig, Disposition, MAX_BATCH};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn bridge_never_panics(
        frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..80), 1..MAX_BATCH),
        ingress in 0u16..8,
        now in any::<u64>(),
    ) {
        let mut bridge = Bridge::new(&BridgeConfig { fdb_capacity: 16, announce_learning: true, ..Default::default() });
        let mut next = [Disposition::Drop; MAX_BATCH];
        bridge.process(&frames, ingress, now, &mut next);
        bridge.housekeeping(now);
        for (frame, d) in frames.iter().zip(next.iter()) {
            if frame.len() < 14 {
                prop_assert_eq!(*d, Disposition::Drop);
            }
            if let Disposition::Forward(p) = d {
                prop_assert_ne!(*p, ingress);
            }
        }
    }
}
