//! The fuzz corpus replayed in `cargo test`: every committed seed (`fuzz/corpus/<target>/`) and minimized crash
//! reproducer (`fuzz/regressions/<target>/`, when there are any) goes through the same checks as the cargo-fuzz
//! targets — the targets and this test include the same files, fuzz/checks/<target>.rs — without nightly,
//! libFuzzer or sanitizers. So a change that breaks a seed's property (a zero-copy value copied, a frame cut
//! wrongly, a valid message no longer decoding) fails here, not only in a fuzzing run nobody started.
//! scripts/fuzz.sh is still where new inputs are found.

use std::path::{Path, PathBuf};

#[path = "../fuzz/checks/pgoutput_decode.rs"]
mod pgoutput_decode;
#[path = "../fuzz/checks/replication_framing.rs"]
mod replication_framing;

/// The files of `fuzz/<kind>/<target>/`, sorted; none if the directory does not exist.
fn inputs(kind: &str, target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz").join(kind).join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else { return Vec::new() };
    let mut files: Vec<PathBuf> = entries.map(|e| e.unwrap().path()).filter(|p| p.is_file()).collect();
    files.sort();
    files
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The seeds are valid pgoutput messages (one per message kind, docs/reliability.md "Fuzzing"): each must decode
/// and pass the target's checks; a reproducer must pass the checks (decoding or not).
#[test]
fn pgoutput_decode_seeds_pass_the_fuzz_checks() {
    let seeds = inputs("corpus", "pgoutput_decode");
    assert!(seeds.len() >= 17, "the committed seeds are missing: {seeds:?}");
    for seed in &seeds {
        assert!(pgoutput_decode::run(&read(seed)), "{} no longer decodes", seed.display());
    }
    for reproducer in inputs("regressions", "pgoutput_decode") {
        pgoutput_decode::run(&read(&reproducer));
    }
}

/// Every seed is a stream holding at least one whole frame, cut and checked as `Conn::read_frame` would.
#[test]
fn replication_framing_seeds_pass_the_fuzz_checks() {
    let seeds = inputs("corpus", "replication_framing");
    assert!(seeds.len() >= 10, "the committed seeds are missing: {seeds:?}");
    for seed in &seeds {
        assert!(replication_framing::run(&read(seed)) > 0, "{} cut no frame", seed.display());
    }
    for reproducer in inputs("regressions", "replication_framing") {
        replication_framing::run(&read(&reproducer));
    }
}

/// Each seed also arrives in every chunk size the target can pick (its first byte), so the partial-frame paths
/// of the seeds run too, and the same frames come out.
#[test]
fn replication_framing_seeds_cut_the_same_frames_in_any_chunking() {
    for seed in inputs("corpus", "replication_framing") {
        let data = read(&seed);
        let whole = replication_framing::run(&[&[0][..], &data[1..]].concat());
        for chunk in [1u8, 2, 3, 7, 64, 255] {
            let frames = replication_framing::run(&[&[chunk][..], &data[1..]].concat());
            assert_eq!(frames, whole, "{} in chunks of {chunk}", seed.display());
        }
    }
}
