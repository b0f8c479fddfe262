// Runs inside a test container as a unit's ExecStartPost (with NotifyAccess=all): hands
// systemd's fd store an fd that is not a GPU node under a GPU's name, as a bug or a hostile
// process in the unit's cgroup might. argv[2]: the FDNAME, argv[3]: the file to send.
import { openSync } from "node:fs";
import koffi from "/usr/lib/gpu-persistd/node_modules/koffi/index.js";

const libc = koffi.load("libc.so.6");
koffi.struct("iov", { base: "void *", len: "size_t" });
koffi.struct("msg", {
  name: "void *",
  namelen: "uint32_t",
  iov: "iov *",
  iovlen: "size_t",
  control: "void *",
  controllen: "size_t",
  flags: "int",
});
const socket = libc.func("int socket(int, int, int)");
const sendmsg = libc.func("intptr_t sendmsg(int, const msg *, int)");
const path = process.env.NOTIFY_SOCKET;
const address = Buffer.alloc(110);
address.writeUInt16LE(1, 0);
address.write(path, 2);
const payload = Buffer.from(`FDSTORE=1\nFDNAME=${process.argv[2]}\nFDPOLL=0\n`);
const control = Buffer.alloc(24);
control.writeBigUInt64LE(20n, 0);
control.writeInt32LE(1, 8);
control.writeInt32LE(1, 12);
control.writeInt32LE(openSync(process.argv[3], "r"), 16);
const sent = sendmsg(
  socket(1, 2, 0),
  {
    name: address,
    namelen: 2 + Buffer.byteLength(path) + 1,
    iov: [{ base: payload, len: payload.length }],
    iovlen: 1,
    control,
    controllen: control.length,
    flags: 0,
  },
  0,
);
if (Number(sent) < 0) process.exit(1);
