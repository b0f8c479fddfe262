#!/usr/bin/env bash
# The daemon started as gpu-persistd.socket starts it, on the GPU machine, read-only
# (test/gpu/socket_unit.py): the staged package (.devcarry/stage) and a carried Node, the
# launcher pointed at them. Results: $OUT/socket-unit.json, stamped with the commit.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/gpu-results}
mkdir -p "$OUT"
source test/gpu/common.sh
STAGE=$PWD/.devcarry/stage
sed -e "s#^exec [^ ]* #exec $NODE #" -e "s#/usr/lib/gpu-persistd/#$STAGE/usr/lib/gpu-persistd/#" \
  "$STAGE/usr/bin/gpu-persistd" >/tmp/gpu-persistd-launcher
chmod +x /tmp/gpu-persistd-launcher
pkill -TERM -f 'gpu-persistd.mjs' && sleep 1 || true
if pgrep -f 'bin/nvidia-persistenced' >/dev/null; then echo "ABORT: a persistence daemon runs here" >&2; exit 2; fi
COMMIT=${COMMIT:-$(cat .devcarry/commit 2>/dev/null || git rev-parse --short HEAD)}
python3 test/gpu/socket_unit.py /tmp/gpu-persistd-launcher "$STAGE/usr/lib/gpu-persistd/gpu-persistd.mjs" "$OUT" "$COMMIT"
