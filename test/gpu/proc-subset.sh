#!/usr/bin/env bash
# The daemon under the shipped unit's view of /proc, on the GPU machine, read-only: the unit
# sets ProcSubset=pid and ProtectProc=invisible, which systemd applies by mounting procfs with
# subset=pid,hidepid=invisible in the service's mount namespace. That hides /proc/driver/nvidia,
# which real NVML and the launcher read. The GPU machine has no systemd, so this mounts the same
# procfs in a private mount namespace (unshare) and runs the staged launcher there with
# --dry-run, as footprint.sh does. Results: $OUT/proc-subset.json, stamped with the commit.
set -euo pipefail
cd "$(dirname "$0")/../.."
source test/gpu/common.sh
persistence_enabled before
stage_launcher
only_ours
RUNTIME=/run/nvidia-persistenced
rm -rf "$RUNTIME"
LOG=$OUT/proc-subset-daemon.log
# Everything below the mount runs with the unit's /proc: the daemon, its client and nvidia-smi.
unshare --mount --propagation private env NODE="$NODE" BUNDLE="$STAGE/usr/lib/gpu-persistd/gpu-persistd.mjs" \
  RUNTIME="$RUNTIME" LOG="$LOG" OUT="$OUT" bash -c '
  set -u
  mount -t proc -o subset=pid,hidepid=invisible proc /proc
  if [[ -e /proc/driver/nvidia ]]; then echo yes; else echo no; fi >"$OUT/proc-subset-driver-visible.txt"
  # What the launcher counts to size the pool: the PCI devices bound to the nvidia driver.
  ls /sys/bus/pci/drivers/nvidia | grep -Ec "^[0-9a-f]{4,8}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$" >"$OUT/proc-subset-sysfs-gpus.txt"
  nvidia-smi -L >"$OUT/proc-subset-nvidia-smi-L.txt" 2>&1
  echo $? >"$OUT/proc-subset-nvidia-smi-L.rc"
  NODE_OPTIONS=--jitless GPU_PERSISTD_CONFIG=/tmp/gpd-config.json \
    /tmp/gpu-persistd-launcher --dry-run --runtime-dir="$RUNTIME" >"$LOG" 2>&1 &
  pid=$!
  for _ in $(seq 1 300); do grep -q "\"ready: " "$LOG" && break; kill -0 $pid 2>/dev/null || break; sleep 0.1; done
  "$NODE" "$BUNDLE" --runtime-dir="$RUNTIME" status --json >"$OUT/proc-subset-status.json" 2>&1
  nvidia-smi --query-gpu=persistence_mode --format=csv,noheader >"$OUT/proc-subset-nvidia-smi-pm.txt" 2>&1
  tr "\0" "\n" </proc/$pid/environ | grep "^UV_THREADPOOL_SIZE=" >"$OUT/proc-subset-pool.txt" || true
  kill -TERM $pid 2>/dev/null
  wait $pid
  echo $? >"$OUT/proc-subset-daemon.rc"
'
persistence_enabled after
python3 - "$OUT" "$COMMIT" <<'EOF'
import json, sys
out, commit = sys.argv[1], sys.argv[2]
read = lambda name: open(f"{out}/proc-subset-{name}").read().strip()
try:
    status = json.loads(read("status.json"))
except ValueError:
    status = None
devices = status["devices"] if status else []
result = {
    "commit": commit,
    "proc_mount": "subset=pid,hidepid=invisible (the unit's ProcSubset=pid, ProtectProc=invisible)",
    "driver_dir_visible": read("driver-visible.txt") == "yes",
    "nvidia_smi_L_rc": int(read("nvidia-smi-L.rc")),
    "daemon_ready": status is not None and status.get("ready") is True,
    "held": sum(1 for d in devices if d["held"]),
    "gpus": len(devices),
    "legacy_flag": [d["legacyFlag"] for d in devices],
    "nvidia_smi_persistence": read("nvidia-smi-pm.txt").splitlines(),
    "threadpool": read("pool.txt"),
    "sysfs_gpus": int(read("sysfs-gpus.txt")),
    "daemon_exit_code": int(read("daemon.rc")),
    "setter_never_called": "nvmlDeviceSetPersistenceMode" not in open(f"{out}/proc-subset-daemon.log").read(),
}
result["ok"] = (
    result["daemon_ready"]
    and result["held"] == result["gpus"] == result["sysfs_gpus"] > 0
    and result["daemon_exit_code"] == 0
    and result["setter_never_called"]
)
json.dump(result, open(f"{out}/proc-subset.json", "w"), indent=2)
print(json.dumps(result, indent=2))
sys.exit(0 if result["ok"] else 1)
EOF
