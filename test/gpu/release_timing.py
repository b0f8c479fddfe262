"""Release and re-hold latency against a running gpu-persistd (dry run), from root, with no
NVML in between: the persistence protocol's Set through its RPC socket (ONC RPC over a unix
socket, record marking, AUTH_NONE: version 2's SetPersistenceModeOnly and version 1's Set,
DISABLED then ENABLED), and `release GPU -- COMMAND`'s lease over the control socket (time
to the release's answer, then to the re-hold's once the client ends its side).

    python3 release_timing.py RUNTIME_DIR DOMAIN BUS DEVICE ROUNDS OUT_JSON
"""
import json
import socket
import struct
import sys
import time

runtime, domain, bus, device, rounds, out = sys.argv[1], *map(int, sys.argv[2:6]), sys.argv[6]


def rpc_set(version, mode, xid):
    body = struct.pack(">IIIIII", xid, 0, 2, 35006, version, 1) + struct.pack(">IIII", 0, 0, 0, 0)
    body += struct.pack(">iiiii", domain, bus, device, 0, mode)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)  # NVML's own client gives up after 5 s
    t0 = time.perf_counter()
    s.connect(f"{runtime}/socket")
    s.sendall(struct.pack(">I", 0x80000000 | len(body)) + body)
    reply = b""
    while len(reply) < 4 or len(reply) < 4 + (struct.unpack(">I", reply[:4])[0] & 0x7FFFFFFF):
        chunk = s.recv(4096)
        if not chunk:
            raise SystemExit("the daemon closed the RPC connection without a reply")
        reply += chunk
    ms = (time.perf_counter() - t0) * 1000
    s.close()
    # xid, REPLY, MSG_ACCEPTED, verifier (flavor, length 0), SUCCESS, then the status.
    _, mtype, stat, _, vlen, accept = struct.unpack(">IIIIII", reply[4:28])
    status = struct.unpack(">i", reply[28 + vlen : 32 + vlen])[0]
    if (mtype, stat, accept, status) != (1, 0, 0, 0):
        raise SystemExit(f"RPC v{version} Set {mode}: reply {mtype}/{stat}/{accept}, status {status}")
    return ms


def lease():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    t0 = time.perf_counter()
    s.connect(f"{runtime}/gpu-persistd.sock")
    s.sendall(b'{"command":"release","gpus":["0"]}\n')
    buf, release = b"", None
    while True:
        chunk = s.recv(65536)
        if not chunk:
            raise SystemExit(f"the daemon closed the control connection: {buf[:200]!r}")
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            answer = json.loads(line)
            if "error" in answer:
                raise SystemExit(f"release refused: {answer['error']}")
            if "released" in answer:
                release = time.perf_counter()
                s.shutdown(socket.SHUT_WR)
            elif "held" in answer:
                s.close()
                return (release - t0) * 1000, (time.perf_counter() - release) * 1000


def pct(values, p):
    v = sorted(values)
    return round(v[min(len(v) - 1, len(v) * p // 100)], 2)


result = {}
for version in (2, 1):
    off, on = [], []
    for i in range(rounds):
        off.append(rpc_set(version, 0, 2 * i + 1))
        on.append(rpc_set(version, 1, 2 * i + 2))
    result[f"rpc_v{version}_release_ms"] = {"p50": pct(off, 50), "p99": pct(off, 99), "max": round(max(off), 2)}
    result[f"rpc_v{version}_rehold_ms"] = {"p50": pct(on, 50), "p99": pct(on, 99), "max": round(max(on), 2)}
leases = [lease() for _ in range(rounds)]
result["lease_release_ms"] = {"p50": pct([a for a, _ in leases], 50), "p99": pct([a for a, _ in leases], 99)}
result["lease_rehold_ms"] = {"p50": pct([b for _, b in leases], 50), "p99": pct([b for _, b in leases], 99)}
result["rounds"] = rounds
json.dump(result, open(out, "w"), indent=2)
print(json.dumps(result))
