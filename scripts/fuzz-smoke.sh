#!/usr/bin/env bash
# Builds the fuzz targets under fuzz/ (every one `cargo fuzz list` reports:
# frame_decode_json, frame_decode_msgpack, envelope_decode, jwt_claims) and
# runs each for a fixed time on the stable toolchain; exits non-zero when a
# target crashes (or fails to build). See docs/fuzzing.md.
#
#   scripts/fuzz-smoke.sh [SECONDS]        # default 60 s per target
#
# Environment:
#   FUZZ_TARGETS    targets to run, space-separated (default: all in fuzz/)
#   FUZZ_SANITIZER  none (default) | address | ...  Anything but `none` needs
#                   `-Zsanitizer`, so on a stable rustc it is built with
#                   RUSTC_BOOTSTRAP=1, in its own target dir.
#
# New inputs the fuzzer finds go to fuzz/target/corpus/<target>/ (ignored by
# git, kept between runs); the checked-in seeds in fuzz/corpus/<target>/ are
# only read. A crashing input is saved in fuzz/artifacts/<target>/, and the
# full libFuzzer output of each run in fuzz/target/fuzz-logs/<target>.log.
set -euo pipefail

CARGO_FUZZ_VERSION=0.13.2

seconds=${1:-60}
if ! [[ $seconds =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: $0 [SECONDS]  (a positive whole number, default 60)" >&2
    exit 2
fi
sanitizer=${FUZZ_SANITIZER:-none}

cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz $CARGO_FUZZ_VERSION"
    cargo install --locked cargo-fuzz --version "$CARGO_FUZZ_VERSION"
fi

fuzz_args=(--fuzz-dir fuzz --sanitizer "$sanitizer")
# CI keeps its cargo target dir outside the clone; build the fuzzers there
# too, so a fresh clone does not rebuild them from cold.
if [[ -n ${CARGO_TARGET_DIR:-} && $sanitizer == none ]]; then
    fuzz_args+=(--target-dir "$CARGO_TARGET_DIR/fuzz")
fi
if [[ $sanitizer != none ]]; then
    # cargo-fuzz passes -Zsanitizer=<name>; stable rustc takes -Z flags only
    # with RUSTC_BOOTSTRAP. A separate target dir keeps both builds warm.
    if ! rustc --version | grep -q -- '-nightly'; then
        export RUSTC_BOOTSTRAP=1
    fi
    fuzz_args+=(--target-dir "fuzz/target/sanitizer-$sanitizer")
fi

if [[ -n ${FUZZ_TARGETS:-} ]]; then
    read -r -a targets <<<"$FUZZ_TARGETS"
else
    mapfile -t targets < <(cargo fuzz list --fuzz-dir fuzz)
fi
if ((${#targets[@]} == 0)); then
    echo "no fuzz targets found" >&2
    exit 2
fi

echo "== building ${targets[*]} (sanitizer: $sanitizer)"
for target in "${targets[@]}"; do
    cargo fuzz build "${fuzz_args[@]}" "$target"
done

mkdir -p fuzz/target/fuzz-logs
failed=()
summary=()
for target in "${targets[@]}"; do
    corpus=fuzz/target/corpus/$target
    seeds=fuzz/corpus/$target
    log=fuzz/target/fuzz-logs/$target.log
    mkdir -p "$corpus" "$seeds" "fuzz/artifacts/$target"
    echo "== fuzzing $target for ${seconds}s"
    set +e
    cargo fuzz run "${fuzz_args[@]}" "$target" "$corpus" "$seeds" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 >"$log" 2>&1
    status=$?
    set -e
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n1)
    rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$log" | tail -n1)
    units=$(find "$corpus" -type f | wc -l)
    if ((status == 0)); then
        line="$target: ok, ${runs:-?} executions in ${seconds}s (${rate:-?}/s), peak RSS ${rss:-?} MB, corpus $units inputs"
    else
        failed+=("$target")
        line="$target: FAILED (exit $status) after ${runs:-?} executions; see $log and fuzz/artifacts/$target/"
        tail -n 60 "$log"
    fi
    echo "$line"
    summary+=("$line")
done

echo "== summary"
printf '%s\n' "${summary[@]}"
if ((${#failed[@]} > 0)); then
    echo "crashed: ${failed[*]}" >&2
    exit 1
fi
