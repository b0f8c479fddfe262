#!/usr/bin/env bash
# The daemon started as gpu-persistd.socket starts it, on the GPU machine, read-only
# (test/gpu/socket_unit.py): the staged package (.devcarry/stage) and a carried Node, the
# launcher pointed at them. Results: $OUT/socket-unit.json, stamped with the commit.
set -euo pipefail
cd "$(dirname "$0")/../.."
source test/gpu/common.sh
stage_launcher
only_ours
python3 test/gpu/socket_unit.py /tmp/gpu-persistd-launcher "$STAGE/usr/lib/gpu-persistd/gpu-persistd.mjs" "$OUT" "$COMMIT"
