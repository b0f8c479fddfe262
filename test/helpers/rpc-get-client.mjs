// An NVML client stand-in in a process of its own (the daemon closes connections from its own
// process unanswered): sends one persistence Get (v1, GPU 0000:06:00) to the socket in argv[2],
// prints "connected" once connected, then the reply's NvPdStatus and mode, or "closed".
import { connect } from "node:net";

const call = Buffer.alloc(4 + 56);
call.writeUInt32BE((0x80000000 | 56) >>> 0, 0);
// xid, CALL, rpcvers 2, program 35006, version 1, proc 2, AUTH_NONE x2, then domain, bus, slot, function
for (const [i, v] of [1, 0, 2, 35006, 1, 2, 0, 0, 0, 0, 0, 6, 0, 0].entries()) call.writeUInt32BE(v, 4 + 4 * i);
const s = connect(process.argv[2]);
const chunks = [];
let done = false;
const finish = (line) => {
  if (done) return;
  done = true;
  process.stdout.write(`${line}\n`);
};
s.on("connect", () => {
  process.stdout.write("connected\n");
  s.write(call);
});
// One call per connection, as NVML: done at the first whole reply.
s.on("data", (c) => {
  chunks.push(c);
  const reply = Buffer.concat(chunks);
  if (reply.length >= 36) {
    finish(`status ${reply.readInt32BE(28)} mode ${reply.readInt32BE(32)}`);
    s.destroy();
  }
});
s.on("error", () => finish("closed"));
s.on("close", () => {
  const reply = Buffer.concat(chunks);
  finish(reply.length >= 36 ? `status ${reply.readInt32BE(28)} mode ${reply.readInt32BE(32)}` : "closed");
});
