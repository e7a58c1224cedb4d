//! Fuzzes the replication-protocol framing and the CopyBoth payload parser: the input is a stream of bytes as
//! received from the server's socket. The checks are in fuzz/checks/replication_framing.rs, which
//! tests/fuzz_seeds.rs also runs on every committed seed in `cargo test`.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../checks/replication_framing.rs"]
mod check;

fuzz_target!(|data: &[u8]| {
    check::run(data);
});
