#!/usr/bin/env bash
# Benchmark (not a test): time until N hosts announced on the LAN are inventoried and probed by
# the broker, and the broker's memory. Everything runs inside network namespaces this script's
# lab creates and removes. Needs root and the packages scripts/test.sh installs.
#   bench/inventory.sh [N]      (default 1000)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000}
cargo build --release --quiet --bin virtgate
cargo build --release --quiet -p virtgate-discovery --example advertise_many
cargo build --release --quiet -p virtgate-testlab --example bench_inventory
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r)"
target/release/examples/bench_inventory "$PWD/target/release/virtgate" "$PWD/target/release/examples/advertise_many" "$N"
