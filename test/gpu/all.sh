#!/usr/bin/env bash
# Every GPU-machine suite in one call (the machine is lent for short runs), read-only: run.sh,
# parity.sh, footprint.sh, socket-unit.sh, telemetry.sh and proc-subset.sh, each into $RESULTS, then one
# tarball and the suites' JSON in $OUT (what comes back from the machine). IDLE_SECONDS and
# QUERIES shorten the idle and query phases where the call's time limit needs it.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/gpu-results}
RESULTS=${RESULTS:-/tmp/gpu-results}
COMMIT=${COMMIT:-$(cat .devcarry/commit 2>/dev/null || git rev-parse --short HEAD)}
rm -rf "$RESULTS" && mkdir -p "$RESULTS" "$OUT"
summary="$RESULTS/summary.txt"
echo "commit $COMMIT, $(date -u +%FT%TZ), $(nvidia-smi -L | tr '\n' ' ')" >"$summary"
for suite in run parity footprint socket-unit telemetry proc-subset; do
  start=$(date +%s)
  OUT=$RESULTS COMMIT=$COMMIT bash "test/gpu/$suite.sh" >"$RESULTS/$suite.out" 2>&1
  echo "$suite: exit $? in $(($(date +%s) - start)) s" | tee -a "$summary"
done
tar -czf "$OUT/gpu-results.tgz" -C "$RESULTS" .
cp "$summary" "$OUT/"
for f in gpu-suite.json parity.json footprint.json socket-unit.json telemetry.json proc-subset.json; do
  [[ -f $RESULTS/$f ]] && cp "$RESULTS/$f" "$OUT/"
done
