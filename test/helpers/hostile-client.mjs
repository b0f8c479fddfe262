// A hostile local user, run as uid 65534 (setpriv) by test/daemon/hostile.test.ts. Plain
// JavaScript so that it runs as is under any user. Prints one JSON line with what it saw.
//   flood SOCKET RECORD_HEX SECONDS      pipeline calls as fast as possible, never read a reply
//   slots SOCKET COUNT SECONDS           open COUNT connections, trickle a byte each 300 ms
//   halfclose SOCKET RECORD_HEX COUNT    send COUNT calls, shut the write side, read every reply
//   control SOCKET COUNT                 COUNT bad control requests, each trying to forge a log line
import { connect } from "node:net";

const [mode, path, ...args] = process.argv.slice(2);
const done = (result) => {
  process.stdout.write(`${JSON.stringify(result)}\n`);
  process.exit(0);
};

if (mode === "flood") {
  const record = Buffer.from(args[0], "hex");
  const batch = Buffer.concat(Array.from({ length: 1000 }, () => record));
  let written = 0;
  const s = connect(path);
  s.on("error", () => {});
  s.on("close", () => done({ written, closedByDaemon: true }));
  const pump = () => {
    while (s.write(batch)) written += batch.length;
    written += batch.length;
  };
  s.on("connect", pump);
  s.on("drain", pump);
  s.pause();
  setTimeout(() => done({ written, closedByDaemon: false }), Number(args[1]) * 1000);
} else if (mode === "slots") {
  const count = Number(args[0]);
  const started = Date.now();
  let opened = 0;
  let closedEarly = 0;
  let closed = 0;
  const sockets = [];
  for (let i = 0; i < count; i++) {
    const s = connect(path);
    s.on("connect", () => opened++);
    s.on("error", () => {});
    s.on("close", () => {
      closed++;
      if (Date.now() - started < 1000) closedEarly++;
    });
    sockets.push(s);
  }
  // One byte of a record header now and then: a record that never completes.
  const timer = setInterval(() => {
    for (const s of sockets) if (!s.destroyed && s.writable) s.write(Buffer.from([0x80]));
  }, 300);
  setTimeout(() => {
    clearInterval(timer);
    done({ opened, closedEarly, closed, count });
  }, Number(args[1]) * 1000);
} else if (mode === "halfclose") {
  const record = Buffer.from(args[0], "hex");
  const count = Number(args[1]);
  let buffered = Buffer.alloc(0);
  let replies = 0;
  const s = connect(path, () => {
    s.write(Buffer.concat(Array.from({ length: count }, () => record)));
    s.end();
  });
  s.on("data", (chunk) => {
    buffered = Buffer.concat([buffered, chunk]);
    while (buffered.length >= 4) {
      const length = buffered.readUInt32BE(0) & 0x7fffffff;
      if (buffered.length < 4 + length) break;
      buffered = buffered.subarray(4 + length);
      replies++;
    }
  });
  s.on("error", (err) => done({ replies, error: err.message }));
  s.on("close", () => done({ replies }));
} else if (mode === "control") {
  const count = Number(args[0]);
  let answered = 0;
  const next = (i) => {
    if (i >= count) return done({ answered });
    const s = connect(path, () => s.write('{"command":"x\\nFATAL forged line"}\n'));
    s.on("data", () => answered++);
    s.on("error", () => {});
    s.on("close", () => next(i + 1));
  };
  next(0);
} else {
  process.stderr.write(`unknown mode ${mode}\n`);
  process.exit(2);
}
