//! `vswitch-fuzz`: a mutational fuzzer for the pipeline that runs on stable Rust. It replays
//! the corpus, then mutates its entries (bit flips, byte writes, inserts, deletes, splices)
//! and keeps a mutant that moves a gateway counter to a new order of magnitude (the counters
//! stand in for coverage). It stops at the deadline; a panic or a broken invariant writes the
//! case to the artifacts folder and exits 1.
//!
//!   vswitch-fuzz [--seconds N] [--corpus DIR] [--artifacts DIR] [--seed N] [--write-seeds]
#![deny(unsafe_code)]

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(rng: &mut Rng, case: &[u8], corpus: &[Vec<u8>]) -> Vec<u8> {
    let mut c = case.to_vec();
    for _ in 0..1 + rng.below(4) {
        match rng.below(6) {
            0 if !c.is_empty() => {
                let at = rng.below(c.len());
                c[at] ^= 1 << rng.below(8);
            }
            1 if !c.is_empty() => {
                let at = rng.below(c.len());
                c[at] = rng.next() as u8;
            }
            2 => {
                let at = rng.below(c.len() + 1);
                let n = 1 + rng.below(8);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                c.splice(at..at, bytes);
            }
            3 if c.len() > 1 => {
                let at = rng.below(c.len());
                let n = 1 + rng.below((c.len() - at).min(8));
                c.drain(at..at + n);
            }
            4 => {
                let other = &corpus[rng.below(corpus.len())];
                let from = rng.below(other.len() + 1);
                c.extend_from_slice(&other[from..]);
            }
            _ => c.extend((0..1 + rng.below(16)).map(|_| rng.next() as u8)),
        }
    }
    c.truncate(4096);
    c
}

/// Runs a case; `Err` carries what went wrong (a panic's message, or the broken invariant).
fn run(case: &[u8]) -> Result<vswitch_fuzz::Signature, String> {
    match std::panic::catch_unwind(|| vswitch_fuzz::run_case(case)) {
        Ok(result) => result,
        Err(panic) => Err(format!(
            "panic: {}",
            panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default()
        )),
    }
}

fn main() {
    let mut seconds = 60u64;
    let mut corpus_dir = PathBuf::from("fuzz/corpus/pipeline");
    let mut artifacts = PathBuf::from("target/fuzz-artifacts");
    let mut seed = 0x5eed_u64;
    let mut write_seeds = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next().unwrap_or_else(|| {
                eprintln!("vswitch-fuzz: {arg} needs a value");
                std::process::exit(2)
            })
        };
        match arg.as_str() {
            "--seconds" => seconds = value().parse().unwrap_or(60),
            "--corpus" => corpus_dir = value().into(),
            "--artifacts" => artifacts = value().into(),
            "--seed" => seed = value().parse().unwrap_or(seed),
            "--write-seeds" => write_seeds = true,
            other => {
                eprintln!("vswitch-fuzz: unknown argument {other}");
                std::process::exit(2)
            }
        }
    }
    if write_seeds {
        std::fs::create_dir_all(&corpus_dir).expect("creating the corpus folder");
        for i in 0..vswitch_fuzz::templates::all().len() {
            let path = corpus_dir.join(format!("seed-{i:02}"));
            std::fs::write(&path, vswitch_fuzz::seed(i)).expect("writing a seed");
        }
        for (i, case) in vswitch_fuzz::compound_seeds().into_iter().enumerate() {
            let path = corpus_dir.join(format!("seed-compound-{i}"));
            std::fs::write(&path, case).expect("writing a seed");
        }
        println!("vswitch-fuzz: seeds written to {}", corpus_dir.display());
        return;
    }
    // Panics are reported with the case; the default hook's message would come first.
    std::panic::set_hook(Box::new(|_| {}));
    let mut corpus: Vec<Vec<u8>> = std::fs::read_dir(&corpus_dir)
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .filter_map(|e| std::fs::read(e.path()).ok())
                .collect()
        })
        .unwrap_or_default();
    if corpus.is_empty() {
        corpus.push(vswitch_fuzz::seed(0));
    }
    let crash = |case: &[u8], why: &str| -> ! {
        std::fs::create_dir_all(&artifacts).ok();
        let name = format!(
            "crash-{:016x}",
            case.iter()
                .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ *b as u64)
                    .wrapping_mul(0x100_0000_01b3))
        );
        let path = artifacts.join(name);
        let _ = std::fs::write(&path, case);
        eprintln!(
            "vswitch-fuzz: {why}\nvswitch-fuzz: case written to {}",
            path.display()
        );
        std::process::exit(1)
    };
    let mut seen: HashSet<(usize, u32)> = HashSet::new();
    for case in &corpus {
        match run(case) {
            Ok(sig) => seen.extend(sig),
            Err(why) => crash(case, &why),
        }
    }
    let replayed = corpus.len();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut rng = Rng(seed | 1);
    let mut runs = 0u64;
    while Instant::now() < deadline {
        let parent = &corpus[rng.below(corpus.len())];
        let case = mutate(&mut rng, parent, &corpus);
        runs += 1;
        match run(&case) {
            Ok(sig) => {
                let new = sig.iter().filter(|s| !seen.contains(s)).count();
                if new > 0 {
                    seen.extend(sig);
                    corpus.push(case);
                }
            }
            Err(why) => crash(&case, &why),
        }
    }
    println!(
        "vswitch-fuzz: {runs} cases in {seconds} s after replaying {replayed}; corpus grew to {}, {} counter/magnitude pairs reached; no crash, no broken invariant",
        corpus.len(),
        seen.len()
    );
}
