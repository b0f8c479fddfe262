#!/usr/bin/env bash
# Parity checks on the GPU machine, read-only (the rules of gpu-machine.md): what the kernel
# says to NV_ESC_NUMA_INFO per GPU, a UVM registration under --uvm-persistence-mode held and
# released cleanly, `wait`, and `release 0 -- true`. The daemon runs with --dry-run only;
# persistence must read Enabled before and after. Results land in $OUT (default ./gpu-results).
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNTIME=/run/nvidia-persistenced
source test/gpu/common.sh
# exec: started with &, the background job is then the daemon itself, so $! is its PID.
gpd() { GPU_PERSISTD_CONFIG=/tmp/gpd-config.json UV_USE_IO_URING=0 UV_THREADPOOL_SIZE=8 exec "$NODE" "$BUNDLE" "$@"; }

wait_for() {
  for _ in $(seq 600); do grep -qE "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "timed out waiting for '$2' in $1" >&2; cat "$1" >&2; return 1
}

persistence_enabled before
only_ours
rm -rf "$RUNTIME"
{
  echo "== /proc/driver/nvidia/gpus/*/numa_status"
  for f in /proc/driver/nvidia/gpus/*/numa_status; do [[ -e $f ]] && echo "$f: $(cat "$f")"; done
  echo "== auto_online_blocks: $(cat /sys/devices/system/memory/auto_online_blocks 2>&1)"
  echo "== CoherentGPUMemoryMode: $(grep -i coherent /proc/driver/nvidia/params 2>&1 || echo absent)"
  echo "== nvidia-uvm: $(ls -l /dev/nvidia-uvm 2>&1); module: $(grep -c '^nvidia_uvm ' /proc/modules || true)"
} >"$OUT/parity-kernel.txt" 2>&1

# Waiting before the daemon exists: wait must block, then answer 0 once it is ready.
( (gpd wait --timeout=30 --runtime-dir="$RUNTIME") >"$OUT/parity-wait.txt" 2>&1; echo "exit $?" >>"$OUT/parity-wait.txt") &
wait_pid=$!
sleep 0.5
gpd --dry-run --verbose --uvm-persistence-mode --runtime-dir="$RUNTIME" >"$OUT/parity-daemon.log" 2>&1 &
gpd_pid=$!
wait_for "$OUT/parity-daemon.log" 'ready: [0-9]+/[0-9]+ GPUs held'
wait "$wait_pid" || true
(gpd status --json --runtime-dir="$RUNTIME") >"$OUT/parity-status.json"
ls -l "/proc/$gpd_pid/fd" >"$OUT/parity-fds-before.txt"
(gpd doctor --json) >"$OUT/parity-doctor.json" || true
# release 0 -- true: the GPU's node, UVM registration and NVML session go, then come back.
set +e
(gpd release 0 --runtime-dir="$RUNTIME" -- sh -c "ls -l /proc/$gpd_pid/fd > $OUT/parity-fds-released.txt; $NODE $BUNDLE status --json --runtime-dir=$RUNTIME > $OUT/parity-status-released.json" \
  ) >"$OUT/parity-release.txt" 2>&1
echo "exit $?" >>"$OUT/parity-release.txt"
set -e
(gpd status --json --runtime-dir="$RUNTIME") >"$OUT/parity-status-after.json"
ls -l "/proc/$gpd_pid/fd" >"$OUT/parity-fds-after.txt"
# Release and re-hold latency with the shipped defaults: RPC v2 and v1 Set, and the lease.
read -r pci_domain pci_bus pci_device < <(python3 -c 'import json,sys; b=json.load(open(sys.argv[1]))["devices"][0]["pciBusId"]; d,bu,rest=b.split(":"); print(int(d,16), int(bu,16), int(rest.split(".")[0],16))' "$OUT/parity-status-after.json")
set +e
python3 test/gpu/release_timing.py "$RUNTIME" "$pci_domain" "$pci_bus" "$pci_device" "${RELEASE_ROUNDS:-20}" "$OUT/parity-release-timing.json" >"$OUT/parity-release-timing.txt" 2>&1
echo "exit $?" >>"$OUT/parity-release-timing.txt"
set -e
kill -TERM "$gpd_pid"; wait "$gpd_pid" && gpd_exit=0 || gpd_exit=$?
persistence_enabled after

python3 - "$OUT" "$gpd_exit" <<'PY'
import json, os, sys, time
out, gpd_exit = sys.argv[1], int(sys.argv[2])
log = open(f"{out}/parity-daemon.log").read()
st = json.load(open(f"{out}/parity-status.json"))
during = json.load(open(f"{out}/parity-status-released.json"))
after = json.load(open(f"{out}/parity-status-after.json"))
fds = {k: open(f"{out}/parity-fds-{k}.txt").read() for k in ("before", "released", "after")}
# fds on exactly /dev/nvidia-uvm (not nvidia-uvm-tools): ours, and any NVML keeps.
uvm = {k: sum(1 for l in v.splitlines() if l.endswith("-> /dev/nvidia-uvm")) for k, v in fds.items()}
numa_lines = [l for l in log.splitlines() if "NV_ESC_NUMA_INFO" in l or "no NUMA information" in l]
doctor = json.load(open(f"{out}/parity-doctor.json"))
result = {
    "date": time.strftime("%Y-%m-%d"),
    "kernel": open(f"{out}/parity-kernel.txt").read().splitlines(),
    "numa_info_per_gpu": numa_lines,
    "numa_in_status": [d["numa"] for d in st["devices"]],
    "checks": {
        "dry_run": st["dryRun"] is True and st["simulated"] is False,
        "setter_never_called": "persistence mode enabled" not in log,
        "wait_exit_0": open(f"{out}/parity-wait.txt").read().strip().endswith("exit 0"),
        "uvm_registered_every_gpu": all(d["uvm"] == "registered" for d in st["devices"]),
        "uvm_fd_held": uvm["before"] >= len(st["devices"]),
        "release_exit_0": open(f"{out}/parity-release.txt").read().strip().endswith("exit 0"),
        "released_during_command": during["devices"][0]["state"] == "released" and during["nvmlSession"] is False,
        "no_fd_on_gpu0_during_command": "/dev/nvidia0" not in fds["released"] and uvm["released"] < uvm["before"],
        "uvm_fds_back_after": uvm["after"] == uvm["before"],
        "held_again_after": all(d["held"] for d in after["devices"]) and after["nvmlSession"] is True,
        "uvm_registered_again": all(d["uvm"] == "registered" for d in after["devices"]),
        "doctor_numa_check": next((c for c in doctor["checks"] if c["id"] == "numa"), None),
        "release_timing_ran": open(f"{out}/parity-release-timing.txt").read().strip().endswith("exit 0"),
        "release_and_rehold_p99_within_300_ms": all(
            v["p99"] <= 300 for k, v in (json.load(open(f"{out}/parity-release-timing.json")) if os.path.exists(f"{out}/parity-release-timing.json") else {"missing": {"p99": 1e9}}).items() if isinstance(v, dict)
        ),
        "clean_stop": gpd_exit == 0,
    },
    "uvm_errors": [d["uvmError"] for d in st["devices"] if d["uvmError"]],
    "uvm_fds": uvm,
    "fds_before": [l.split(" -> ")[1] for l in fds["before"].splitlines() if " -> /dev/" in l],
    "release_timing": json.load(open(f"{out}/parity-release-timing.json")) if os.path.exists(f"{out}/parity-release-timing.json") else None,
}
json.dump(result, open(f"{out}/parity.json", "w"), indent=2)
result["daemon_log_tail"] = log.splitlines()[-25:]
json.dump(result, open(f"{out}/parity.json", "w"), indent=2)
print(json.dumps(result, indent=2))
bad = [k for k, v in result["checks"].items() if v is False]
sys.exit(f"parity: failed checks: {bad}" if bad else 0)
PY
echo "parity: all checks passed"
