#!/usr/bin/env bash
# Runs test/gpu/footprint.py on the GPU machine with the staged package (.devcarry/stage,
# from scripts/stage.mjs) and a carried Node (.devcarry/node.xz): the launcher pointed at them.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/gpu-results}
mkdir -p "$OUT"
command -v nvidia-smi >/dev/null || { echo "ABORT: no nvidia-smi here: this suite needs a GPU machine with the NVIDIA driver" >&2; exit 2; }
NODE=$(command -v node || true)
if [[ -z $NODE ]]; then
  xz -dc .devcarry/node.xz >/tmp/node && chmod +x /tmp/node
  NODE=/tmp/node
fi
STAGE=$PWD/.devcarry/stage
sed -e "s#exec /usr/bin/node #exec $NODE #" -e "s#/usr/lib/gpu-persistd/#$STAGE/usr/lib/gpu-persistd/#" \
  "$STAGE/usr/bin/gpu-persistd" >/tmp/gpu-persistd-launcher
chmod +x /tmp/gpu-persistd-launcher
pkill -TERM -f 'gpu-persistd.mjs' && sleep 1 || true
if pgrep -f 'bin/nvidia-persistenced' >/dev/null; then echo "ABORT: a persistence daemon runs here" >&2; exit 2; fi
python3 test/gpu/footprint.py /tmp/gpu-persistd-launcher "$OUT"
