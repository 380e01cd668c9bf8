//! The fuzz corpus in CI: every input in `fuzz/corpus/<target>/` (the seeds, and a minimised
//! set of what cargo-fuzz runs found worth keeping) goes through its target's function in
//! `backflow::fuzzing`, and so do 40 byte-level mutations of each seed, deterministic from a
//! fixed seed. The long runs are coverage-guided (see fuzz/Cargo.toml and the README).

type Target = fn(&[u8]);

const TARGETS: [(&str, Target); 5] = [
    ("config", backflow::fuzzing::config),
    ("manifest", backflow::fuzzing::manifest),
    ("csv", backflow::fuzzing::csv),
    ("quoting", backflow::fuzzing::quoting),
    ("templates", backflow::fuzzing::templates),
];

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .filter(|e| e.path().is_file())
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

/// A small mutation of `input`, drawn from `rng`.
fn mutate(input: &[u8], rng: &mut u64) -> Vec<u8> {
    let mut next = || {
        *rng ^= *rng << 13;
        *rng ^= *rng >> 7;
        *rng ^= *rng << 17;
        *rng
    };
    let mut out = input.to_vec();
    const BYTES: &[u8] = b"\0\"',;\n\r{}[]=\\`|\x01\xff\xfe#.?/";
    for _ in 0..(1 + next() % 4) {
        let at = if out.is_empty() {
            0
        } else {
            (next() as usize) % out.len()
        };
        match next() % 4 {
            0 if !out.is_empty() => {
                out.remove(at);
            }
            1 if !out.is_empty() => out[at] ^= 1 << (next() % 8),
            2 => out.insert(at, BYTES[(next() as usize) % BYTES.len()]),
            _ => out.truncate(at),
        }
    }
    out
}

#[test]
fn the_fuzz_corpus_and_its_mutations_keep_every_invariant() {
    let mut total = 0;
    for (target, run) in TARGETS {
        let inputs = corpus(target);
        assert!(!inputs.is_empty(), "no corpus for {target}");
        let mut rng = 0x2545_f491_4f6c_dd1d_u64;
        for (name, input) in &inputs {
            let result = std::panic::catch_unwind(|| run(input));
            assert!(
                result.is_ok(),
                "{target}: corpus input {name} broke an invariant"
            );
            total += 1;
            // The seeds are mutated too (what the fuzzer kept is its own mutations already).
            let rounds = if name.starts_with("seed-") { 40 } else { 0 };
            for i in 0..rounds {
                let m = mutate(input, &mut rng);
                let result = std::panic::catch_unwind(|| run(&m));
                assert!(
                    result.is_ok(),
                    "{target}: mutation {i} of {name} broke an invariant: {:?}",
                    String::from_utf8_lossy(&m)
                );
                total += 1;
            }
        }
    }
    eprintln!("fuzz corpus: {total} inputs through 5 targets");
}
