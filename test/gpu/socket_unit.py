#!/usr/bin/env python3
"""The daemon started on the GPU machine as gpu-persistd.socket starts it, read-only.

Both sockets are bound and listening before the daemon runs and handed to it in LISTEN_FDS,
a notify socket is bound here (NOTIFY_SOCKET), the installed launcher runs `--dry-run`.
Meanwhile an NVML client (pynvml, in a process of its own) queries the persistence mode in a
loop, from before the exec until after READY: with the socket listening, real NVML waits for
the daemon's answer without a limit, so its longest wait is how long the node's NVML clients
waited on the start. The same start without the handed sockets is the baseline.

  socket_unit.py LAUNCHER BUNDLE OUT_DIR COMMIT      (test/gpu/socket-unit.sh passes them)
Writes OUT_DIR/socket-unit.json: commit, ready_ms, ready_ms_without_socket_unit, held,
selected, setter_never_called, client_longest_wait_ms, rpc_answer, nvidia_smi_answer.
"""
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time

from read_only import persistence

LAUNCHER, BUNDLE, OUT, COMMIT = sys.argv[1:5]
RUNTIME = "/run/nvidia-persistenced"
RPC = f"{RUNTIME}/socket"
CONTROL = f"{RUNTIME}/gpu-persistd.sock"
NOTIFY = "/tmp/gpd-socket-unit-notify"
ROUNDS = int(os.environ.get("ROUNDS", "3"))


def listening(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    os.chmod(path, 0o666)
    s.listen(4096)
    return s


def notify_socket():
    if os.path.exists(NOTIFY):
        os.unlink(NOTIFY)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(NOTIFY)
    s.settimeout(60)
    return s


def wait_ready(notify):
    while True:
        data = notify.recv(65536).decode(errors="replace")
        if "READY=1" in data.split("\n"):
            return


def client():
    """pynvml in a process of its own, querying every 20 ms; prints the longest wait at SIGTERM."""
    code = (
        "import pynvml,signal,sys,time\n"
        "pynvml.nvmlInit(); h=pynvml.nvmlDeviceGetHandleByIndex(0); longest=[0.0]\n"
        "signal.signal(signal.SIGTERM, lambda *_: (print(round(longest[0],1), flush=True), sys.exit(0)))\n"
        "print('ready', flush=True)\n"
        "while True:\n"
        "  t=time.perf_counter(); pynvml.nvmlDeviceGetPersistenceMode(h)\n"
        "  longest[0]=max(longest[0],(time.perf_counter()-t)*1000); time.sleep(0.02)\n"
    )
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    return p


def start(handed, log):
    """Starts the daemon; with `handed`, the sockets bound before it, as the socket unit does."""
    subprocess.run(["rm", "-rf", RUNTIME], check=True)
    os.makedirs(RUNTIME, mode=0o755)
    notify = notify_socket()
    sockets = [listening(RPC), listening(CONTROL)] if handed else []
    env = {k: v for k, v in os.environ.items() if not k.startswith("UV_")}
    env.update(NODE_OPTIONS="--jitless", GPU_PERSISTD_CONFIG="/tmp/gpd-config.json", NOTIFY_SOCKET=NOTIFY)
    if handed:
        env.update(LISTEN_FDS="2", LISTEN_FDNAMES="gpu-persistd.socket:gpu-persistd.socket")
    fds = [s.fileno() for s in sockets]
    # At fds 3 and 4, as systemd passes them, by way of 8 and 9 (either may sit at 3 or 4
    # here); LISTEN_PID is the shell's own, which exec keeps.
    cmd = ["sh", "-c", 'exec 8<&"$1" 9<&"$2"; shift 2; exec 3<&8 4<&9 8<&- 9<&-; LISTEN_PID=$$ exec "$@"', "sh",
           *map(str, fds), LAUNCHER, "--dry-run", f"--runtime-dir={RUNTIME}"]
    if not handed:
        cmd = [LAUNCHER, "--dry-run", f"--runtime-dir={RUNTIME}"]
    t0 = time.perf_counter()
    child = subprocess.Popen(cmd, env=env, stdout=log, stderr=log, pass_fds=fds)
    wait_ready(notify)
    ready_ms = (time.perf_counter() - t0) * 1000
    for s in sockets:
        s.close()  # the daemon has its own copies, as systemd keeps its own
    notify.close()
    return child, ready_ms


def stop(child):
    child.send_signal(signal.SIGTERM)
    child.wait(timeout=30)


def rpc_get(bus_id):
    """One persistence Get (v1, proc 2) as NVML sends it; the mode the daemon answers."""
    domain, bus, rest = bus_id.split(":")
    slot = rest.split(".")[0]
    words = [1, 0, 2, 35006, 1, 2, 0, 0, 0, 0, int(domain, 16), int(bus, 16), int(slot, 16), 0]
    body = struct.pack(f">{len(words)}I", *words)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(RPC)
    s.sendall(struct.pack(">I", 0x80000000 | len(body)) + body)
    reply = b""
    while len(reply) < 36:
        chunk = s.recv(64)
        if not chunk:
            break
        reply += chunk
    s.close()
    status, mode = struct.unpack(">ii", reply[28:36])
    return {"status": status, "mode": mode}


def status():
    out = subprocess.run([LAUNCHER, "status", "--json", f"--runtime-dir={RUNTIME}"],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


result = {"commit": COMMIT, "date": time.strftime("%Y-%m-%d"), "persistence_before": persistence("before")}
open("/tmp/gpd-config.json", "w").write("{}")
log = open(f"{OUT}/socket-unit.log", "w")
without, with_unit, waits = [], [], []
for _ in range(ROUNDS):
    child, ms = start(False, log)
    without.append(ms)
    stop(child)
    querying = client()
    child, ms = start(True, log)
    with_unit.append(ms)
    querying.send_signal(signal.SIGTERM)
    waits.append(float(querying.stdout.readline().strip() or "nan"))
    querying.wait()
    if len(with_unit) < ROUNDS:
        stop(child)
median = lambda xs: sorted(xs)[len(xs) // 2]
s = status()
selected = [d for d in s["devices"] if d["selected"]]
result.update(
    ready_ms=round(median(with_unit), 1),
    ready_ms_without_socket_unit=round(median(without), 1),
    ready_ms_each={"with_socket_unit": [round(x, 1) for x in with_unit],
                   "without": [round(x, 1) for x in without]},
    held=sum(1 for d in selected if d["held"]),
    selected=len(selected),
    legacy_flag=[d.get("legacyFlag") for d in s["devices"]],
    client_longest_wait_ms=max(waits),
    client_longest_wait_ms_each=waits,
    rpc_answer=rpc_get(s["devices"][0]["pciBusId"]),
    status_persistence=[d["persistence"] for d in s["devices"]],
    nvidia_smi_answer=subprocess.run(["nvidia-smi", "--query-gpu=persistence_mode", "--format=csv,noheader"],
                                     capture_output=True, text=True, check=True).stdout.split(),
)
stop(child)
log.close()
result["persistence_after"] = persistence("after")
text = open(f"{OUT}/socket-unit.log").read()
# No setter can have been called: the bundle does not even name NVML's setter.
result["setter_never_called"] = "nvmlDeviceSetPersistenceMode" not in open(BUNDLE).read()
result["fatal"] = "start-up failed" in text
result["within_target"] = result["ready_ms"] <= 1.2 * result["ready_ms_without_socket_unit"] + 50
json.dump(result, open(f"{OUT}/socket-unit.json", "w"), indent=2)
print(json.dumps(result, indent=2))
ok = (result["held"] == result["selected"] and result["setter_never_called"] and result["within_target"]
      and not result["fatal"])
sys.exit(0 if ok else 1)
