//! Fuzzes the pgoutput decoder, `ficus::postgres::pgoutput::decode`: the input is one XLogData payload (one
//! pgoutput message, as the server sends it). The checks are in fuzz/checks/pgoutput_decode.rs, which
//! tests/fuzz_seeds.rs also runs on every committed seed in `cargo test`.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../checks/pgoutput_decode.rs"]
mod check;

fuzz_target!(|data: &[u8]| {
    check::run(data);
});
