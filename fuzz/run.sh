#!/usr/bin/env bash
# Runs one cargo-fuzz target: fuzz/run.sh TARGET [SECONDS]   (default 600 s)
# New inputs go to fuzz/corpus/TARGET (not committed); committed seeds are read from
# fuzz/seeds/TARGET. cargo-fuzz needs nightly features: RUSTC_BOOTSTRAP=1 enables them on
# the stable toolchain this project uses. Install once: cargo install cargo-fuzz --locked
# SANITIZER=none fuzz/run.sh TARGET runs without AddressSanitizer (about 3x the executions;
# the project's own crates forbid unsafe code).
set -euo pipefail
cd "$(dirname "$0")/.."
target="${1:?usage: fuzz/run.sh TARGET [SECONDS]}"
seconds="${2:-600}"
mkdir -p "fuzz/corpus/$target"
RUSTC_BOOTSTRAP=1 exec cargo fuzz run --sanitizer "${SANITIZER:-address}" "$target" "fuzz/corpus/$target" "fuzz/seeds/$target" \
    -- -max_total_time="$seconds" -print_final_stats=1
