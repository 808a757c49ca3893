#!/usr/bin/env bash
# The half-resolution claim on the built-in synthetic shapes (issue 16): for each seed,
# (a) train at the test resolution and test there, against (b) the default recipe:
# train at a lower resolution with train_res % 32 == test_res % 32, fine-tune the head
# at the test resolution, test there. Prints one line per run (accuracy at the test
# resolution, wall time) and the means. Same data, augmentation (random square crops of
# at least half the image) and epochs for both.
#
#   benches/recipe.sh [SEEDS] [LOW_RES] [TEST_RES]      # defaults: "0 1 2" 48 80
set -euo pipefail
cd "$(dirname "$0")/.."
seeds=${1:-0 1 2}
low=${2:-48}
test=${3:-80}
bin=target/release/effnet
cargo build --release -q
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
printf '%-8s %-4s %-22s %10s %10s %8s\n' recipe seed resolutions "acc@low" "acc@test" "wall s"
for seed in $seeds; do
  for recipe in native half; do
    if [ "$recipe" = native ]; then
      args=(--res "$test" --finetune-res "$test" --finetune-epochs 0)
      what="$test (no fine-tuning)"
    else
      args=(--res "$low" --finetune-res "$test")
      what="$low, head ft at $test"
    fi
    start=$(date +%s.%N)
    "$bin" train --quiet --seed "$seed" --checkpoint "$dir/c.safetensors" "${args[@]}" >"$dir/log"
    end=$(date +%s.%N)
    wall=$(echo "$end - $start" | bc)
    lowacc=$(sed -n 's/^accuracy after training at [0-9]*×[0-9]*: \([0-9.]*\) %.*/\1/p' "$dir/log")
    final=$(sed -n 's/^accuracy at [0-9]*×[0-9]* after head fine-tuning: \([0-9.]*\) %.*/\1/p' "$dir/log")
    [ -n "$final" ] || final=$lowacc
    printf '%-8s %-4s %-22s %10s %10s %8.1f\n' "$recipe" "$seed" "$what" "$lowacc" "$final" "$wall"
    echo "$recipe $final $wall" >>"$dir/all"
  done
done
awk '{n[$1]++; a[$1]+=$2; t[$1]+=$3} END {for (r in n) printf "mean %-8s accuracy at the test resolution %.1f %%, wall %.1f s (%d seeds)\n", r, a[r]/n[r], t[r]/n[r], n[r]}' "$dir/all"
