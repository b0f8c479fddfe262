// Runs inside a test container: samples every process's open fds (/proc/*/fd) every few
// milliseconds and counts, for each device node named, the samples in which no process
// held it. Files are matched by inode, not by the link's text: PID 1's copies of a
// service's fds name paths as the service's mount namespace saw them. SIGTERM ends it; it then writes {samples, gaps} as JSON to the output file.
// Prints "watching" once the first sample is taken. The last sample's holders (pid -> nodes)
// go into the result too, to show what was seen. A third argument (/proc/PID/ns/pid of a
// container, as readlink reads it) limits the look to that container's processes: a watcher
// on the host, which a soft reboot inside does not end, samples as fast as one inside.
import { readdirSync, readlinkSync, statSync, writeFileSync } from "node:fs";

const nodes = process.argv[2].split(",");
const out = process.argv[3];
const pidNamespace = process.argv[4];
const gaps = Object.fromEntries(nodes.map((n) => [n, 0]));
const byInode = new Map(
  nodes.map((n) => {
    const st = statSync(n);
    return [`${st.dev}:${st.ino}`, n];
  }),
);
let samples = 0;
writeFileSync(`${out}.pid`, String(process.pid));
let stop = false;
process.on("SIGTERM", () => {
  stop = true;
});

let last = {};
function held() {
  const seen = new Set();
  last = {};
  for (const pid of readdirSync("/proc")) {
    if (!/^\d+$/.test(pid)) continue;
    let fds;
    try {
      if (pidNamespace && readlinkSync(`/proc/${pid}/ns/pid`) !== pidNamespace) continue;
      fds = readdirSync(`/proc/${pid}/fd`);
    } catch {
      continue;
    }
    for (const fd of fds) {
      try {
        const st = statSync(`/proc/${pid}/fd/${fd}`);
        const target = byInode.get(`${st.dev}:${st.ino}`);
        if (target !== undefined) {
          seen.add(target);
          last[pid] = [...(last[pid] ?? []), target];
        }
      } catch {
        // The process or fd went away meanwhile.
      }
    }
  }
  return seen;
}

function sample() {
  const seen = held();
  samples++;
  for (const n of nodes) if (!seen.has(n)) gaps[n]++;
  if (samples === 1) process.stdout.write("watching\n");
  if (stop) {
    writeFileSync(out, JSON.stringify({ samples, gaps, last }));
    process.exit(0);
  }
  setTimeout(sample, 2);
}
sample();
