#!/usr/bin/env bash
# Runs test/gpu/footprint.py on the GPU machine with the staged package (.devcarry/stage,
# from scripts/stage.mjs) and a carried Node (.devcarry/node.xz): the launcher pointed at them.
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
python3 test/gpu/footprint.py /tmp/gpu-persistd-launcher "$OUT"
