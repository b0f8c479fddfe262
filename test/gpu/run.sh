#!/usr/bin/env bash
# The GPU suite: proof against the real libnvidia-ml and the real NVML client, read-only.
# The daemon runs with --dry-run only (it never calls a persistence setter), and the script
# aborts unless persistence reads Enabled before and after. Then, side by side, NVIDIA's own
# nvidia-persistenced with its default options. Results land in $OUT (default ./gpu-results).
#
# Needs: nvidia-smi, python3, the NVIDIA driver; node (or .devcarry/node.xz) and either
# dist/ + node_modules/ or the staged tree in .devcarry/stage (scripts/stage.mjs).
set -euo pipefail
cd "$(dirname "$0")/../.."
IDLE_SECONDS=${IDLE_SECONDS:-60}
QUERIES=${QUERIES:-20}
RUNTIME=/run/nvidia-persistenced
REAL_DAEMON=${REAL_DAEMON:-/usr/local/nvidia/bin/nvidia-persistenced}

source test/gpu/common.sh
# exec: started with &, the background job is then the daemon itself, so $! is its PID.
gpd() { GPU_PERSISTD_CONFIG=/tmp/gpd-config.json exec "$NODE" "$BUNDLE" "$@"; }

now_ms() { date +%s%3N; }
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# Median latency in ms of QUERIES `nvidia-smi --query-gpu=persistence_mode` calls.
query_ms() {
  local times=()
  for _ in $(seq "$QUERIES"); do
    local t0; t0=$(date +%s%N)
    nvidia-smi --query-gpu=persistence_mode --format=csv,noheader >/dev/null
    times+=($((($(date +%s%N) - t0) / 1000)))
  done
  printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {printf "%.1f", a[int((NR+1)/2)]/1000}'
}

# Waits for a regex in a file, up to 120 s.
wait_for() {
  for _ in $(seq 1200); do
    grep -qE "$2" "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "timed out waiting for '$2' in $1" >&2
  cat "$1" >&2
  return 1
}

# Sends SIGTERM to a process that is not our child, waits for it to go; prints the ms it took.
stop_ms() {
  local pid=$1 t0; t0=$(now_ms)
  kill -TERM "$pid"
  while kill -0 "$pid" 2>/dev/null; do sleep 0.005; done
  echo $(($(now_ms) - t0))
}

persistence_enabled before
if pgrep -f 'bin/nvidia-persistenced' >/dev/null || fuser -s "$RUNTIME/nvidia-persistenced.pid" 2>/dev/null; then
  echo "ABORT: a persistence daemon already runs here (it holds $RUNTIME); this suite starts its own" >&2
  exit 2
fi
# Files left by a daemon that was killed (nobody holds them): the real daemon would trip on them.
rm -rf "$RUNTIME"
# index, uuid, PCI bus id from the query interface; the minor number (not a query field on
# every driver) from nvidia-smi -q, in the same GPU order.
nvidia-smi --query-gpu=index,uuid,pci.bus_id --format=csv,noheader >/tmp/gpd-identity.csv
nvidia-smi -q | awk -F: '/Minor Number/ {gsub(/ /, "", $2); print $2}' >/tmp/gpd-minors.txt
paste -d, /tmp/gpd-identity.csv /tmp/gpd-minors.txt >"$OUT/nvidia-smi-identity.csv"
nvidia-smi -L >"$OUT/nvidia-smi-L.txt"

echo "== gpu-persistd --dry-run against the real libnvidia-ml"
t0=$(now_ms)
gpd --dry-run --verbose --runtime-dir="$RUNTIME" --metrics-listen=127.0.0.1:9477 \
  --metrics-textfile="$OUT/gpu-persistd.prom" >"$OUT/gpu-persistd.log" 2>&1 &
gpd_pid=$!
wait_for "$OUT/gpu-persistd.log" 'ready: [0-9]+/[0-9]+ GPUs held'
gpd_ready_ms=$(($(now_ms) - t0))
(gpd status --json --runtime-dir="$RUNTIME") >"$OUT/status.json"
python3 - "$OUT/status.json" <<'PY' || { kill -KILL "$gpd_pid"; exit 2; }
import json, sys
s = json.load(open(sys.argv[1]))
if s["dryRun"] is not True or s["simulated"] is not False:
    sys.exit("ABORT: the daemon is not in real --dry-run mode")
PY
ls -l "/proc/$gpd_pid/fd" >"$OUT/gpu-persistd-fds.txt"
sleep 3 # a few health rounds and event waits
# doctor reads only: the driver, the nodes, NVML against the kernel module, the daemon, each GPU.
(gpd doctor --json) >"$OUT/doctor.json" || true
nvidia-smi -q >"$OUT/nvidia-smi-q-with-gpu-persistd.txt"
nvidia-smi --query-gpu=persistence_mode --format=csv >"$OUT/query-with-gpu-persistd.csv"
gpd_query_ms=$(query_ms)
gpd_rss_kb=$(rss_kb "$gpd_pid")
c0=$(cpu_ticks "$gpd_pid"); sleep "$IDLE_SECONDS"; c1=$(cpu_ticks "$gpd_pid")
gpd_cpu_ticks=$((c1 - c0))
gpd_threads=$(awk '/^Threads:/ {print $2}' "/proc/$gpd_pid/status")
# After the queries and the idle minute: RPC calls and health rounds are counted by now.
python3 -c 'import urllib.request; print(urllib.request.urlopen("http://127.0.0.1:9477/metrics").read().decode())' \
  >"$OUT/metrics.txt"
t0=$(now_ms)
kill -TERM "$gpd_pid"
wait "$gpd_pid" && gpd_exit=0 || gpd_exit=$?
gpd_stop_ms=$(($(now_ms) - t0))
gpd_files_left=$({ ls -A "$RUNTIME" 2>/dev/null || true; } | wc -l)

echo "== NVIDIA's nvidia-persistenced, default options"
real_ready_ms=-1 real_rss_kb=-1 real_cpu_ticks=-1 real_stop_ms=-1 real_query_ms=-1 real_threads=-1
real_status=not-run
if [[ -x $REAL_DAEMON ]]; then
  # It logs only to syslog ("failed to initialize. Check syslog"): catch /dev/log if nothing does.
  if [[ ! -S /dev/log ]]; then
    python3 -c '
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind("/dev/log")
out = open(sys.argv[1], "a", buffering=1)
while True:
    out.write(s.recv(65536).decode(errors="replace") + "\n")
' "$OUT/syslog.txt" &
    syslog_pid=$!
    sleep 0.5
  fi
  t0=$(now_ms)
  # It forks; the parent returns once the child is set up.
  if "$REAL_DAEMON"; then real_status=started; else real_status="failed ($?)"; fi
  real_ready_ms=$(($(now_ms) - t0))
fi
if [[ $real_status == started ]]; then
  real_pid=$(cat /var/run/nvidia-persistenced/nvidia-persistenced.pid)
  (gpd doctor --json) >"$OUT/doctor-with-nvidia-persistenced.json" || true
  nvidia-smi --query-gpu=persistence_mode --format=csv >"$OUT/query-with-nvidia-persistenced.csv"
  real_query_ms=$(query_ms)
  real_rss_kb=$(rss_kb "$real_pid")
  real_threads=$(awk '/^Threads:/ {print $2}' "/proc/$real_pid/status")
  c0=$(cpu_ticks "$real_pid"); sleep "$IDLE_SECONDS"; c1=$(cpu_ticks "$real_pid")
  real_cpu_ticks=$((c1 - c0))
  real_stop_ms=$(stop_ms "$real_pid")
fi
[[ -n ${syslog_pid:-} ]] && kill "$syslog_pid" && rm -f /dev/log
echo "== no daemon"
none_query_ms=$(query_ms)

persistence_enabled after

python3 - "$OUT" <<PY
import csv, json, os, platform, re, sys, time
out = sys.argv[1]
status = json.load(open(f"{out}/status.json"))
smi = [dict(zip(["index", "uuid", "pci_bus_id", "minor"], [c.strip() for c in row]))
       for row in csv.reader(open(f"{out}/nvidia-smi-identity.csv"))]
ours = {d["uuid"]: d for d in status["devices"]}
identity = all(
    s["uuid"] in ours
    and ours[s["uuid"]]["index"] == int(s["index"])
    and ours[s["uuid"]]["pciBusId"].lower() == s["pci_bus_id"].lower()
    and ours[s["uuid"]]["minor"] == int(s["minor"])
    for s in smi) and len(smi) == len(status["devices"])
fds = open(f"{out}/gpu-persistd-fds.txt").read()
metrics = open(f"{out}/metrics.txt").read()
doctor = json.load(open(f"{out}/doctor.json"))
doctor_failed = sorted(c["id"] for c in doctor["checks"] if not c["ok"])
doctor_real = json.load(open(f"{out}/doctor-with-nvidia-persistenced.json")) if os.path.exists(f"{out}/doctor-with-nvidia-persistenced.json") else None
log = open(f"{out}/gpu-persistd.log").read()
tick = os.sysconf("SC_CLK_TCK")
idle = int("$IDLE_SECONDS")
result = {
    "date": time.strftime("%Y-%m-%d"),
    "machine": f"{platform.node()} {platform.machine()}, " + open(f"{out}/nvidia-smi-L.txt").read().strip().replace("\n", "; "),
    "driver": (re.search(r"driver=([^ )]+)", log) or [None, None])[1],
    "gpus": len(smi),
    "checks": {
        "identity_matches_nvidia_smi": identity,
        "every_gpu_held": all(d["held"] for d in status["devices"]),
        "held_fds_on_device_nodes": all(f"/dev/nvidia{d['minor']}" in fds for d in status["devices"]),
        "health_loop_ran": "health check passed" in log and "did not return" not in log,
        "event_waiter_registered": "watching Xid events on" in log,
        "nvidia_smi_q_succeeded": os.path.getsize(f"{out}/nvidia-smi-q-with-gpu-persistd.txt") > 0,
        "rpc_gets_answered_in_log": log.count("RPC: get persistence of"),
        "clean_stop_exit_code": int("$gpd_exit"),
        "runtime_files_left": int("$gpd_files_left"),
        "setter_never_called": "persistence mode enabled" not in log,
        "metrics_every_gpu_held": metrics.count("gpu_persistd_gpu_held{") == len(smi)
            and all(l.endswith(" 1") for l in metrics.splitlines() if l.startswith("gpu_persistd_gpu_held{")),
        "metrics_rpc_gets_counted": 'gpu_persistd_rpc_requests_total{procedure="get_persistence_mode",result="ok"}' in metrics,
        "metrics_health_rounds_passed": re.search(r'^gpu_persistd_health_checks_total\{result="passed"\} [1-9]', metrics, re.M) is not None,
        # Written once more at the stop: nothing held any more.
        "metrics_textfile_after_stop": "gpu_persistd_gpu_held{" in open(f"{out}/gpu-persistd.prom").read()
            and all(l.endswith(" 0") for l in open(f"{out}/gpu-persistd.prom").read().splitlines() if l.startswith("gpu_persistd_gpu_held{")),
        # Not installed as a unit here (no systemd): that check alone may fail.
        "doctor_only_unit_fails": doctor_failed == ["unit"],
        "doctor_driver_version": next(c["detail"] for c in doctor["checks"] if c["id"] == "driver-version"),
        "doctor_sees_nvidia_persistenced": doctor_real is None or any(
            c["id"] == "nvidia-persistenced" and not c["ok"] and "running (PID" in c["detail"] for c in doctor_real["checks"]),
    },
    "gpu_persistd": {"ready_ms": $gpd_ready_ms, "rss_kb": $gpd_rss_kb, "threads": $gpd_threads,
                     "idle_cpu_ms_per_min": round($gpd_cpu_ticks * 1000 / tick * 60 / idle, 1),
                     "stop_ms": $gpd_stop_ms, "nvidia_smi_query_ms": $gpd_query_ms},
    "nvidia_persistenced": {"ready_ms": $real_ready_ms, "rss_kb": $real_rss_kb, "threads": $real_threads,
                            "idle_cpu_ms_per_min": round($real_cpu_ticks * 1000 / tick * 60 / idle, 1) if $real_cpu_ticks >= 0 else None,
                            "stop_ms": $real_stop_ms, "nvidia_smi_query_ms": $real_query_ms},
    "no_daemon": {"nvidia_smi_query_ms": $none_query_ms},
    "nvidia_persistenced_status": "$real_status",
    "idle_seconds": idle,
}
json.dump(result, open(f"{out}/gpu-suite.json", "w"), indent=2)
print(json.dumps(result, indent=2))
failed = [k for k, v in result["checks"].items() if v is False or (k in ("clean_stop_exit_code", "runtime_files_left") and v != 0) or (k == "rpc_gets_answered_in_log" and v == 0)]
if failed:
    sys.exit(f"GPU suite: failed checks: {failed}")
print("GPU suite: all checks passed")
PY
