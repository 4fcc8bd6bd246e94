//! The committed corpus replays without a crash or a broken invariant, and reaches the deep
//! paths (so the fuzzer starts from somewhere useful).

use std::collections::HashSet;

#[test]
fn the_corpus_replays_cleanly_and_reaches_every_stage() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/pipeline");
    let mut reached = HashSet::new();
    let mut cases = 0;
    for entry in std::fs::read_dir(&dir).expect("the corpus folder") {
        let path = entry.unwrap().path();
        let case = std::fs::read(&path).unwrap();
        let sig =
            vswitch_fuzz::run_case(&case).unwrap_or_else(|why| panic!("{}: {why}", path.display()));
        reached.extend(sig.into_iter().map(|(counter, _)| counter));
        cases += 1;
    }
    assert!(
        cases >= vswitch_fuzz::templates::all().len(),
        "one seed per template at least"
    );
    let names: HashSet<&str> = reached
        .iter()
        .map(|&i| vswitch_fuzz::signature_name(i))
        .collect();
    for stage in [
        "nat_service",
        "nat_masquerade",
        "nat_node_port",
        "vxlan_encapsulated",
        "vxlan_decapsulated",
        "fragments_followed_first",
        "icmp_related_translated",
        "drop_spoofed",
        "bridged",
        "offers",
        "offers_into_overlay",
        "offers_out_of_overlay",
    ] {
        assert!(
            names.contains(stage),
            "the corpus never reaches {stage}: {names:?}"
        );
    }
}

#[test]
fn seeds_are_one_unmutated_template_each() {
    for i in 0..vswitch_fuzz::templates::all().len() {
        vswitch_fuzz::run_case(&vswitch_fuzz::seed(i)).unwrap();
    }
}
