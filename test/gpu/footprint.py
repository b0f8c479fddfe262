#!/usr/bin/env python3
"""Footprint on the GPU machine, side by side: gpu-persistd (--dry-run, started as the
package's launcher starts it: its libuv settings, V8 flags and the unit's --jitless) and
NVIDIA's nvidia-persistenced (default options), then no daemon. For each: threads, context
switches per idle second, CPU per idle minute, RSS and RssAnon, exec -> RPC socket, SIGTERM ->
exit, and pynvml nvmlDeviceGetPersistenceMode through the socket (p50/p99 over QUERIES calls).
Read-only: persistence must read Enabled before and after (the rules of gpu-machine.md).

  footprint.py LAUNCHER OUT_DIR      (test/gpu/footprint.sh passes them)
"""
import json
import os
import signal
import subprocess
import sys
import time

from read_only import persistence

LAUNCHER, OUT = sys.argv[1:3]
IDLE = int(os.environ.get("IDLE_SECONDS", "60"))
QUERIES = int(os.environ.get("QUERIES", "2000"))
RUNTIME = "/run/nvidia-persistenced"
SOCKET = f"{RUNTIME}/socket"
REAL = os.environ.get("REAL_DAEMON", "/usr/local/nvidia/bin/nvidia-persistenced")


def status(pid):
    return open(f"/proc/{pid}/status").read()


def field(text, key):
    for line in text.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return -1


def switches(pid):
    total = 0
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            s = open(f"/proc/{pid}/task/{t}/status").read()
        except FileNotFoundError:
            continue
        total += field(s, "voluntary_ctxt_switches") + field(s, "nonvoluntary_ctxt_switches")
    return total


def cpu_ms(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")


def queries():
    import pynvml
    pynvml.nvmlInit()
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    times = []
    for _ in range(QUERIES):
        t0 = time.perf_counter_ns()
        pynvml.nvmlDeviceGetPersistenceMode(h)
        times.append((time.perf_counter_ns() - t0) / 1000)
    pynvml.nvmlShutdown()
    times.sort()
    return {"p50_us": round(times[len(times) // 2], 1), "p99_us": round(times[int(len(times) * 0.99)], 1)}


def wait_socket(t0, deadline_s=60):
    while not os.path.exists(SOCKET):
        if time.perf_counter() - t0 > deadline_s:
            raise RuntimeError("no RPC socket")
        time.sleep(0.0005)
    return (time.perf_counter() - t0) * 1000


def measure(pid, exec_ms):
    time.sleep(3)
    s0, c0 = switches(pid), cpu_ms(pid)
    time.sleep(IDLE)
    s1, c1 = switches(pid), cpu_ms(pid)
    st = status(pid)
    return {
        "threads": field(st, "Threads"),
        "wakeups_per_s": round((s1 - s0) / IDLE, 2),
        "idle_cpu_ms_per_min": round((c1 - c0) * 60 / IDLE, 1),
        "rss_mb": round(field(st, "VmRSS") / 1024, 1),
        "anon_mb": round(field(st, "RssAnon") / 1024, 1),
        "exec_to_socket_ms": round(exec_ms, 1),
        "query": queries(),
    }


def stop(pid, child=None):
    t0 = time.perf_counter()
    os.kill(pid, signal.SIGTERM)
    if child:
        child.wait()
    else:
        while os.path.exists(f"/proc/{pid}"):
            time.sleep(0.001)
    return round((time.perf_counter() - t0) * 1000, 1)


result = {"date": time.strftime("%Y-%m-%d"), "idle_seconds": IDLE, "queries": QUERIES,
          "persistence_before": persistence("before")}
subprocess.run(["rm", "-rf", RUNTIME], check=True)
# As the unit runs it: the launcher (its libuv settings and V8 flags) and NODE_OPTIONS=--jitless.
env = {k: v for k, v in os.environ.items() if not k.startswith("UV_")}
env.update(NODE_OPTIONS="--jitless", GPU_PERSISTD_CONFIG="/tmp/gpd-config.json")
open("/tmp/gpd-config.json", "w").write("{}")
log = open(f"{OUT}/footprint-gpu-persistd.log", "w")
t0 = time.perf_counter()
child = subprocess.Popen([LAUNCHER, "--dry-run", f"--runtime-dir={RUNTIME}"], env=env, stdout=log, stderr=log)
exec_ms = wait_socket(t0)
ours = measure(child.pid, exec_ms)
ours["stop_ms"] = stop(child.pid, child)
ours["exit_code"] = child.returncode
result["gpu_persistd"] = ours

real = {"status": "not-run"}
if os.access(REAL, os.X_OK):
    subprocess.run(["rm", "-rf", RUNTIME], check=True)
    t0 = time.perf_counter()
    subprocess.run([REAL], check=True)  # forks; the parent returns once the child is set up
    exec_ms = wait_socket(t0)
    pid = int(open(f"{RUNTIME}/nvidia-persistenced.pid").read())
    real = measure(pid, exec_ms)
    real["stop_ms"] = stop(pid)
    real["status"] = "ran"
result["nvidia_persistenced"] = real
result["no_daemon"] = {"query": queries()}
result["persistence_after"] = persistence("after")
log.close()
result["setter_never_called"] = "persistence mode enabled" not in open(f"{OUT}/footprint-gpu-persistd.log").read()
json.dump(result, open(f"{OUT}/footprint.json", "w"), indent=2)
print(json.dumps(result, indent=2))
