#!/usr/bin/env bash
# Fuzz smoke run: every cargo-fuzz project beside a crate (`<crate>/fuzz`), every target in it.
# For each target: replay the committed corpus (every input once: a regression test of every
# finding so far), then fuzz for a few seconds from it. A crash fails the script and leaves the
# input in `<crate>/fuzz/artifacts/<target>/`. Long runs are in each project's README.
#
# Needs the nightly toolchain and cargo-fuzz; installs cargo-fuzz when missing.
#   scripts/fuzz-smoke.sh              all projects, FUZZ_SECONDS (default 5) per target
#   scripts/fuzz-smoke.sh rpc pki      only these crates' projects
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${FUZZ_SECONDS:-5}"
# One target directory for every project, unoptimised and without a sanitizer: the projects share
# most dependencies, so they are compiled once, and quickly. That is what a smoke run needs (the
# crates forbid unsafe code; the properties are assertions). Long runs use the projects' own
# release builds with AddressSanitizer (see each README).
target_dir="$PWD/target/fuzz-smoke"
build_flags=(--dev --sanitizer none --target-dir "$target_dir")

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz-smoke: the nightly toolchain is missing: rustup toolchain install nightly" >&2
    exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz-smoke: installing cargo-fuzz"
    cargo install --locked cargo-fuzz
fi

if [ "$#" -gt 0 ]; then
    projects=()
    for crate in "$@"; do projects+=("$crate/fuzz"); done
else
    mapfile -t projects < <(find . -mindepth 2 -maxdepth 2 -type d -name fuzz -not -path './target/*' \
        -exec test -f '{}/Cargo.toml' ';' -print | sed 's|^\./||' | sort)
fi

for project in "${projects[@]}"; do
    crate="${project%/fuzz}"
    mapfile -t targets < <(cd "$crate" && cargo +nightly fuzz list)
    if [ "${#targets[@]}" -eq 0 ]; then
        echo "fuzz-smoke: $project has no targets" >&2
        exit 1
    fi
    echo "== $project: building ${targets[*]}"
    (cd "$crate" && cargo +nightly fuzz build "${build_flags[@]}" 2>&1 | tail -n 1)
    for target in "${targets[@]}"; do
        corpus="$project/corpus/$target"
        mkdir -p "$corpus"
        # Fuzz into a scratch copy: the committed corpus stays the minimised one.
        scratch="$(mktemp -d)"
        cp -r "$corpus/." "$scratch/"
        echo "== $project $target: replaying $(find "$corpus" -type f | wc -l) inputs, then ${seconds}s"
        (cd "$crate" && cargo +nightly fuzz run "${build_flags[@]}" "$target" "../$corpus" -- -runs=0 2>&1 | tail -n 2)
        log="$scratch.log"
        if ! (cd "$crate" && cargo +nightly fuzz run "${build_flags[@]}" "$target" "$scratch" -- \
            -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1); then
            tail -n 40 "$log" >&2
            echo "fuzz-smoke: $project $target crashed; the input is in $project/artifacts/$target/" >&2
            exit 1
        fi
        grep -E 'stat::number_of_executed_units' "$log" || true
        rm -rf "$scratch" "$log"
    done
done
echo "fuzz-smoke: every target ran without a crash"
