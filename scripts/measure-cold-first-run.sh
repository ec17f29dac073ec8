#!/usr/bin/env bash
# The newcomer's first run, timed: a fresh clone of a commit, an empty target directory,
# `cargo run --release -p rigctl -- up --demo` on a fresh database, and the seconds until
# rigctl prints that the system is up ("where to look"). Also counts how many crates cargo
# compiled, and how many of them more than once (a second feature set).
#
#   scripts/measure-cold-first-run.sh [commit]        (default: HEAD)
#
# PORT_OFFSET=1000 moves every listening port (ingest 8080, metrics 9102-9105) up by that much,
# so that two runs (two commits under the same load) can be measured side by side.
set -euo pipefail
commit=${1:-HEAD}
repo=$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)
work=$(mktemp -d /tmp/cold-run.XXXXXX)
trap 'kill -- -$pid 2>/dev/null || true; rm -rf "$work"; psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true' EXIT
git clone -q "$repo" "$work/src"
git -C "$work/src" checkout -q "$(git -C "$repo" rev-parse "$commit")"
db=cold_run_$$
psql -q -h 127.0.0.1 -U postgres -c "CREATE DATABASE $db" >/dev/null
export DATABASE_URL="postgres://postgres@127.0.0.1:5432/$db"
export CARGO_TARGET_DIR="$work/target"
if [ -n "${PORT_OFFSET:-}" ]; then
  export RIG_INGEST__LISTEN=127.0.0.1:$((8080 + PORT_OFFSET))
  export RIG_STALE_HEARTBEAT__INGEST_URL=http://127.0.0.1:$((8080 + PORT_OFFSET))
  export RIG_STALE_HEARTBEAT__METRICS_LISTEN=127.0.0.1:$((9102 + PORT_OFFSET))
  export RIG_COST_PROJECTOR__METRICS_LISTEN=127.0.0.1:$((9103 + PORT_OFFSET))
  export RIG_TOKEN_PROJECTOR__METRICS_LISTEN=127.0.0.1:$((9104 + PORT_OFFSET))
  export RIG_NOTIFIER__METRICS_LISTEN=127.0.0.1:$((9105 + PORT_OFFSET))
fi
cd "$work/src"
start=$(date +%s.%N)
set -m
(cargo run --release -p rigctl -- up --demo >"$work/out" 2>&1) &
pid=$!
while ! grep -q "rig-conductor is up" "$work/out" 2>/dev/null; do
  if ! kill -0 $pid 2>/dev/null; then echo "up exited before it was ready:"; tail -20 "$work/out"; exit 1; fi
  sleep 0.2
done
end=$(date +%s.%N)
# What the workers' build (after rigctl's "building …" line) compiled: the workers' own crates,
# the crates only they use, and any crate compiled again with another feature set.
second=$(sed -n '/^building /,$p' "$work/out" | grep "^ *Compiling " | awk '{print $2}' | tr '\n' ' ')
compiled=$(grep -c "^ *Compiling " "$work/out" || true)
distinct=$(grep "^ *Compiling " "$work/out" | awk '{print $2" "$3}' | sort -u | wc -l)
twice=$(grep "^ *Compiling " "$work/out" | awk '{print $2}' | sort | uniq -d | tr '\n' ' ')
cp "$work/out" "/tmp/cold-first-run-$commit.log"
printf '{"commit":"%s","seconds_to_up":%.1f,"compile_units":%d,"distinct_crates":%d,"compiled_twice":"%s","workers_build_compiled":"%s"}\n' \
  "$(git -C "$work/src" rev-parse --short HEAD)" "$(echo "$end - $start" | bc)" "$compiled" "$distinct" "$twice" "$second"
