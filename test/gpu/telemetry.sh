#!/usr/bin/env bash
# What holding costs and saves, and NVML's recovery action, on the real driver, read-only: the
# daemon runs with --dry-run and health rounds every second; after a few rounds `status --json`,
# `status`, `doctor --json` and the metrics land in $OUT (default ./gpu-results) with
# telemetry.json: per GPU the power, P-state, energy, initialisation and recovery action.
# Needs what test/gpu/run.sh needs (nvidia-smi, python3, the driver, node or .devcarry).
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNTIME=/run/nvidia-persistenced
source test/gpu/common.sh
gpd() { GPU_PERSISTD_CONFIG=/tmp/gpd-config.json GPU_PERSISTD_HEALTH_INTERVAL_MS=1000 exec "$NODE" "$BUNDLE" "$@"; }

persistence_enabled before
if pgrep -f 'bin/nvidia-persistenced' >/dev/null || fuser -s "$RUNTIME/nvidia-persistenced.pid" 2>/dev/null; then
  echo "ABORT: a persistence daemon already runs here (it holds $RUNTIME); this suite starts its own" >&2
  exit 2
fi
rm -rf "$RUNTIME"
gpd --dry-run --verbose --runtime-dir="$RUNTIME" --metrics-listen=127.0.0.1:9477 >"$OUT/telemetry-daemon.log" 2>&1 &
gpd_pid=$!
for _ in $(seq 600); do grep -qE 'ready: [0-9]+/[0-9]+ GPUs held' "$OUT/telemetry-daemon.log" && break; sleep 0.1; done
sleep 3.5 # three health rounds
(gpd status --json --runtime-dir="$RUNTIME") >"$OUT/telemetry-status.json"
(gpd status --runtime-dir="$RUNTIME") >"$OUT/telemetry-status.txt"
(gpd doctor --json) >"$OUT/telemetry-doctor.json" || true
python3 -c 'import urllib.request; print(urllib.request.urlopen("http://127.0.0.1:9477/metrics").read().decode())' \
  >"$OUT/telemetry-metrics.txt"
nvidia-smi --query-gpu=index,power.draw,pstate --format=csv >"$OUT/telemetry-nvidia-smi.csv"
kill -TERM "$gpd_pid"
wait "$gpd_pid" || true
persistence_enabled after
python3 - "$OUT/telemetry-status.json" "$OUT/telemetry.json" <<'PY'
import json, os, subprocess, sys
s = json.load(open(sys.argv[1]))
if s["dryRun"] is not True or s["simulated"] is not False:
    sys.exit("ABORT: the daemon was not in real --dry-run mode")
# COMMIT: set by whoever copies the tree to the GPU machine (it may carry no .git).
commit = os.environ.get("COMMIT") or subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
keys = ["index", "pciBusId", "held", "powerWatts", "pstate", "energyJoules", "initialisation", "initSeconds", "recoveryAction"]
out = {"commit": commit or None, "devices": [{k: d[k] for k in keys} for d in s["devices"]]}
json.dump(out, open(sys.argv[2], "w"), indent=2)
print(json.dumps(out, indent=2))
PY
