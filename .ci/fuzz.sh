#!/usr/bin/env bash
# CI: every cargo-fuzz target, briefly, on the stable toolchain (no sanitizer).
#
# Installs cargo-fuzz when it is missing, builds the targets once, then runs each for
# FUZZ_SECONDS (default 30, as the fuzzing issue asks: all of .ci/run took 330 s with 10 s per
# target on this 2-core machine, so 8 x 30 s keeps it well under 20 minutes) from the
# committed corpus. New inputs go to a scratch directory, so the committed corpus never
# changes here. A crash, a timeout or an out-of-memory fails the step; the input is left in
# fuzz/artifacts/TARGET/ and the fuzzer's log is printed. fuzz/README.md says how to
# reproduce, minimise and keep it.
#
# Except `handover` (the simulation of the node, scripted by the input): it replays its
# committed corpus, every file of which must pass, but does not explore, because exploring
# still finds schedules in a class that issue 13 keeps open (fuzz/README.md,
# "Known findings"). FUZZ_HANDOVER_EXPLORE=1 explores it like the others.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${FUZZ_SECONDS:-30}"

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

cargo fuzz build --sanitizer none
failed=0
for target in $(cargo fuzz list); do
  mkdir -p "$scratch/$target"
  log="$scratch/$target.log"
  if [ "$target" = handover ] && [ "${FUZZ_HANDOVER_EXPLORE:-0}" != 1 ]; then
    inputs=(fuzz/corpus/handover/*)
    # Given files, libFuzzer runs each once and exits.
    if cargo fuzz run --sanitizer none handover "${inputs[@]}" -- \
        -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=256 >"$log" 2>&1; then
      echo "== fuzz handover: replayed ${#inputs[@]} corpus inputs (exploring is off until issue 13's open classes are fixed), no finding"
    else
      echo "== fuzz handover FAILED on a corpus input; the fuzzer's log:" >&2
      cat "$log" >&2
      failed=1
    fi
    continue
  fi
  # -timeout: one input may not take 10 s; -malloc_limit_mb: no single allocation of more
  # than 256 MiB (inputs are at most a few KiB, so that would be an unchecked length).
  if cargo fuzz run --sanitizer none "$target" "$scratch/$target" "fuzz/corpus/$target" -- \
      -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=256 \
      -print_final_stats=1 >"$log" 2>&1; then
    runs="$(grep -o 'stat::number_of_executed_units: [0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')"
    echo "== fuzz $target: ${seconds}s, $runs executions, no finding"
  else
    echo "== fuzz $target FAILED; the fuzzer's log:" >&2
    cat "$log" >&2
    failed=1
  fi
done
exit "$failed"
