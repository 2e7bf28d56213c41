#!/usr/bin/env bash
# Fuzzes one target with libFuzzer, from its committed seed corpus:
#   scripts/fuzz.sh TARGET SECONDS [RUNS]
# TARGET: envelope scheduler worker expression plan shard csv fits adql votable (or `all`, each for SECONDS).
# RUNS (optional) stops after that many inputs instead of SECONDS. Builds tessera-fuzz with
# -sanitize=fuzzer,address (FUZZ_SANITIZERS overrides) in .build-fuzz. New interesting inputs go
# to .build-fuzz/corpus/TARGET; a crash leaves its input in .build-fuzz/crashes/TARGET: copy it to
# Fuzz/regressions/TARGET/ once fixed, and the tests replay it from then on.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${1:?usage: scripts/fuzz.sh TARGET SECONDS [RUNS]}"
seconds="${2:-30}"
runs="${3:--1}"
targets="envelope scheduler worker expression plan shard csv fits adql votable images"
if [ "$target" = all ]; then
  for t in $targets; do "$0" "$t" "$seconds" "$runs"; done
  exit 0
fi
case " $targets " in *" $target "*) ;; *) echo "unknown target $target (one of: $targets, all)" >&2; exit 2 ;; esac
scratch=.build-fuzz
if [ -n "${FUZZ_BIN:-}" ]; then
  bin="$FUZZ_BIN"   # an already built fuzzer (long runs copy it aside, so editing sources meanwhile is safe)
else
  swift build -c release --scratch-path "$scratch" --product tessera-fuzz \
    -Xswiftc "-sanitize=${FUZZ_SANITIZERS:-fuzzer,address}" -Xswiftc -DFUZZING >&2
  bin="$(swift build -c release --scratch-path "$scratch" --show-bin-path)/tessera-fuzz"
fi
corpus="$scratch/corpus/$target"
crashes="$scratch/crashes/$target"
mkdir -p "$corpus" "$crashes"
export TESSERA_FUZZ_TARGET="$target"
export TESSERA_FUZZ_SCRATCH="$scratch/scratch-$target"
# Leaks are checked per input and at exit; a slow input (over 10 s) or one that takes over 2 GB
# counts as a failure. allocator_may_return_null: a huge request fails as malloc does in production
# (cfitsio then reports a FITS error) instead of ASan stopping the run. SWIFT_BACKTRACE=enable=no:
# a Swift trap goes to libFuzzer, which saves the input (the Swift backtracer would hang the run).
set +e
SWIFT_BACKTRACE=enable=no ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=1}" LSAN_OPTIONS="suppressions=$PWD/Fuzz/lsan.supp" "$bin" "$corpus" "Fuzz/corpus/$target" \
  -max_total_time="$seconds" -runs="$runs" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
  -artifact_prefix="$crashes/" -print_final_stats=1 2>&1 | tee "$scratch/last-$target.log" | grep -E "^#|Done|stat::|ERROR|SUMMARY|crash|leak" | tail -n 12
status=${PIPESTATUS[0]}
set -e
if [ "$status" -ne 0 ]; then echo "fuzz target $target FAILED (exit $status): see $scratch/last-$target.log and $crashes" >&2; exit "$status"; fi
