#!/usr/bin/env bash
# Runs ingress-gateway's cargo-fuzz targets (libFuzzer + AddressSanitizer), one job each, in parallel.
#
#   ingress-gateway/fuzz/run.sh [SECONDS]        # default 600 per target
#
# Targets (fuzz_targets/): route_match (host/path matching vs an oracle of the Ingress v1 rules),
# ingress_translate (a sequence of IngressClass/Service/EndpointSlice/Ingress upserts, deletes,
# relists, ExternalName answer changes and store reorders; after every step the long-lived
# config::Translator the binary uses must equal a from-scratch config::translate of the same world,
# and an unchanged world must give back the same Backends; plus order independence and
# served-xor-reported on the final world). Needs cargo-fuzz (`cargo install cargo-fuzz`); it asks for
# nightly, so on a stable toolchain this sets RUSTC_BOOTSTRAP=1 (lets stable rustc accept the -Z
# sanitizer flags; the AddressSanitizer runtime ships with the stable x86_64-linux std).
# Writes corpus/ and artifacts/ (crash inputs) here and a summary line per target to stdout;
# exits non-zero if a target found a crash. Logs: target/fuzz-<target>.log.
set -euo pipefail
SECONDS_PER_TARGET="${1:-600}"
cd "$(dirname "$0")"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
TARGETS=(route_match ingress_translate)
cargo fuzz build -O
mkdir -p target
pids=()
for t in "${TARGETS[@]}"; do
    mkdir -p "corpus/$t"
    cargo fuzz run -O "$t" -- -max_total_time="$SECONDS_PER_TARGET" -max_len=4096 -timeout=10 \
        -print_final_stats=1 >"target/fuzz-$t.log" 2>&1 &
    pids+=($!)
done
rc=0
for i in "${!TARGETS[@]}"; do
    t="${TARGETS[$i]}"
    if wait "${pids[$i]}"; then status=ok; else status="FAILED (see target/fuzz-$t.log, artifacts/$t/)"; rc=1; fi
    runs=$(awk '/stat::number_of_executed_units/{print $2}' "target/fuzz-$t.log")
    secs=$(awk '/stat::average_exec_per_sec/{print $2}' "target/fuzz-$t.log")
    cov=$(grep -oE 'cov: [0-9]+' "target/fuzz-$t.log" | tail -1)
    echo "$t: $status, ${runs:-?} executions in ${SECONDS_PER_TARGET} s (${secs:-?}/s), ${cov:-cov: ?}, corpus $(ls "corpus/$t" | wc -l) inputs"
done
exit $rc
