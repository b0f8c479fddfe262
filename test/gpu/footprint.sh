#!/usr/bin/env bash
# Runs test/gpu/footprint.py on the GPU machine with the staged package (.devcarry/stage,
# from scripts/stage.mjs) and a carried Node (.devcarry/node.xz): the launcher pointed at them.
set -euo pipefail
cd "$(dirname "$0")/../.."
source test/gpu/common.sh
stage_launcher
only_ours
python3 test/gpu/footprint.py /tmp/gpu-persistd-launcher "$OUT"
