#!/usr/bin/env bash
# Fuzzes ficus's wire-format parsers with cargo-fuzz (libFuzzer + AddressSanitizer) for a fixed time per target and
# prints, per target: executions, exec/s, final coverage (cov/ft), crashes, and where the artifacts went.
# Not part of CI. See docs/reliability.md "Fuzzing".
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET]        default 300; targets run one after the other on one core
#   FUZZ_TARGETS="pgoutput_decode" scripts/fuzz.sh 60      a subset
#   nice -n 19 scripts/fuzz.sh                  on a shared machine
#
# Targets (fuzz/fuzz_targets/): pgoutput_decode (one XLogData payload -> pgoutput::decode) and replication_framing
# (a socket byte stream -> frames -> backend messages, XLogData/keepalive payloads, pgoutput). Each run starts
# from a temporary copy of the committed seeds in fuzz/corpus/<target>/, so the repository corpus stays small;
# set FUZZ_KEEP_CORPUS=1 to keep the grown copy. Needs rustup with a nightly toolchain (installed if missing)
# and cargo-fuzz (installed with `cargo install cargo-fuzz --locked` if missing).
# Exit status: 0 when no target crashed, 1 when one did (or a run failed), 2 on bad usage.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-300}"
if ! [[ "$seconds" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: scripts/fuzz.sh [SECONDS_PER_TARGET]   (a positive integer, default 300)" >&2
  exit 2
fi
targets="${FUZZ_TARGETS:-pgoutput_decode replication_framing}"
toolchain="${FUZZ_TOOLCHAIN:-nightly}"

# cargo-fuzz needs nightly (-Zsanitizer, SanitizerCoverage); the project itself builds on stable.
if ! rustup run "$toolchain" rustc --version >/dev/null 2>&1; then
  echo "==> installing the $toolchain toolchain (needed by cargo-fuzz)"
  rustup toolchain install "$toolchain" --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "==> installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

# With -Zsanitizer=address, cc-rs compiles C dependencies with -fsanitize=address too, and librdkafka's configure
# (rdkafka-sys) then fails to link the instrumented libzstd. The fuzzed parsers are Rust; leave the C code alone.
# Run `cargo fuzz` by hand with the same variables, or cargo rebuilds those crates and fails the same way.
export CFLAGS="${CFLAGS:+$CFLAGS }-fno-sanitize=address" CXXFLAGS="${CXXFLAGS:+$CXXFLAGS }-fno-sanitize=address"
by_hand="CFLAGS=-fno-sanitize=address CXXFLAGS=-fno-sanitize=address cargo +$toolchain fuzz"

echo "==> building fuzz targets ($(cargo fuzz --version), $(rustup run "$toolchain" rustc --version))"
cargo "+$toolchain" fuzz build

# Per input (at most 64 KiB): 10 s without returning is a hang ("never loops forever"); more than 2 GiB resident
# is an out-of-memory crash, and so is any single allocation above the target's bound (ASan's malloc hooks):
# - pgoutput_decode: 64 MiB. The decoder caps element counts by the bytes remaining, so a 64 KiB message
#   never needs more than a few MiB.
# - replication_framing: 64 MiB too. split_frame reserves at most 1 MiB ahead of the bytes that arrived, however
#   large the frame a header announces (up to MAX_FRAME, 1 GiB), so a 64 KiB input never needs more than a few
#   MiB; the old limit of 1100 MiB would have let a return of the up-front 1 GiB reservation pass unnoticed.
malloc_limit_mb() {
  case "$1" in
    pgoutput_decode) echo 64 ;;
    replication_framing) echo 64 ;;
    *) echo 2048 ;;
  esac
}

work="$(mktemp -d "${TMPDIR:-/tmp}/ficus-fuzz.XXXXXX")"
cleanup() { if [ "${FUZZ_KEEP_CORPUS:-0}" = 1 ]; then echo "corpus and logs kept in $work"; else rm -rf "$work"; fi; }
trap cleanup EXIT

summary=()
failed=0
for target in $targets; do
  if [ ! -f "fuzz/fuzz_targets/$target.rs" ]; then
    echo "unknown target $target (see fuzz/fuzz_targets/)" >&2
    exit 2
  fi
  corpus="$work/corpus/$target"
  log="$work/$target.log"
  artifacts="fuzz/artifacts/$target"
  mkdir -p "$corpus" "$artifacts"
  cp fuzz/corpus/"$target"/* "$corpus"/
  before="$(ls -A "$artifacts")"
  echo "==> fuzzing $target for ${seconds}s (seeds: $(ls fuzz/corpus/"$target" | wc -l), log: $log)"
  status=0
  started=$SECONDS
  cargo "+$toolchain" fuzz run "$target" "$corpus" -- -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
    -malloc_limit_mb="$(malloc_limit_mb "$target")" -max_len=65536 -print_final_stats=1 >"$log" 2>&1 || status=$?
  wall=$((SECONDS - started))

  # libFuzzer's last status line ("#N DONE cov: C ft: F corp: ... exec/s: E rss: R") and -print_final_stats.
  last="$(grep -E '^#[0-9]+' "$log" | grep ' cov: ' | tail -n 1 || true)"
  cov="$(sed -nE 's/.* cov: ([0-9]+).*/\1/p' <<<"$last")"
  ft="$(sed -nE 's/.* ft: ([0-9]+).*/\1/p' <<<"$last")"
  corp="$(sed -nE 's/.* corp: ([^ ]+).*/\1/p' <<<"$last")"
  execs="$(sed -nE 's/^stat::number_of_executed_units: *([0-9]+).*/\1/p' "$log" | tail -n 1)"
  rate="$(sed -nE 's/^stat::average_exec_per_sec: *([0-9]+).*/\1/p' "$log" | tail -n 1)"
  rss="$(sed -nE 's/^stat::peak_rss_mb: *([0-9]+).*/\1/p' "$log" | tail -n 1)"
  new_artifacts="$(comm -13 <(sort <<<"$before") <(ls -A "$artifacts" | sort) | grep -E '^(crash|oom|timeout|leak)-' || true)"
  crashes="$(grep -c . <<<"$new_artifacts" || true)"
  if [ "$status" -ne 0 ] && [ "$crashes" -eq 0 ]; then
    crashes="?"
    echo "!! $target: cargo fuzz exited with status $status and left no artifact; last lines of $log:" >&2
    tail -n 20 "$log" >&2
    FUZZ_KEEP_CORPUS=1
  fi
  line="$(printf '%-20s %5ss (wall %4ss) %11s execs %7s exec/s  cov %-5s ft %-5s corpus %-11s peak rss %sMB  crashes %s' \
    "$target" "$seconds" "$wall" "${execs:-?}" "${rate:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}" "${rss:-?}" "$crashes")"
  summary+=("$line")
  if [ "$crashes" != 0 ]; then
    failed=1
    FUZZ_KEEP_CORPUS=1
    grep -E -m 5 "panicked at|ERROR: libFuzzer|ERROR: AddressSanitizer|SUMMARY" "$log" | sed 's/^/   /' >&2 || true
    for a in $new_artifacts; do
      summary+=("    artifact: $artifacts/$a")
      summary+=("      reproduce: $by_hand run $target $artifacts/$a")
      summary+=("      minimize:  $by_hand tmin $target $artifacts/$a")
    done
  fi
done

echo
echo "==> fuzzing summary ($(date -u +%Y-%m-%dT%H:%M:%SZ), ${seconds}s per target; artifacts in fuzz/artifacts/<target>/)"
printf '%s\n' "${summary[@]}"
exit "$failed"
