#!/usr/bin/env python3
"""Receives unix datagrams as systemd does, with the sender's kernel credentials.

Usage: datagram-receiver.py ADDRESS   (a path, or @name for the abstract namespace)
Prints "listening" once bound, then one JSON line per datagram:
{"pid": P, "uid": U, "gid": G, "data": "<base64>"}. Node cannot bind a unix datagram
socket, so the tests use this stand-in for systemd's notify and journal sockets.
"""
import base64
import json
import os
import socket
import struct
import sys

address = sys.argv[1]
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
if address.startswith("@"):
    sock.bind("\0" + address[1:])
else:
    sock.bind(address)
    os.chmod(address, 0o777)  # as systemd's own sockets: any identity the daemon drops to may send
print("listening", flush=True)
creds_size = struct.calcsize("3i")
while True:
    data, ancillary, _flags, _addr = sock.recvmsg(1 << 20, socket.CMSG_SPACE(creds_size))
    pid = uid = gid = -1
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            pid, uid, gid = struct.unpack("3i", payload[:creds_size])
    line = {"pid": pid, "uid": uid, "gid": gid, "data": base64.b64encode(data).decode()}
    print(json.dumps(line), flush=True)
