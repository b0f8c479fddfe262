// A hostile local user (uid 65534 through setpriv) against the spawned daemon: memory stays
// bounded whatever a client does, one user cannot lock others out, runtime files are never
// reached through a link, and bad settings end with 78 and the fix, never a stack trace.
import { execFileSync, spawn } from "node:child_process";
import { chmodSync, chownSync, mkdirSync, readFileSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { frameRecord } from "../../src/rpc/record-marking.js";
import { DaemonFixture, ROOT, runBundle, statusJson } from "../helpers/daemon.js";
import { getCall, rpcGet } from "../helpers/rpc.js";

const fixture = new DaemonFixture();
const NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"];
const CLIENT = join(ROOT, "test/helpers/hostile-client.mjs");

/** Runs the hostile client as nobody; resolves the JSON line it prints. */
function asNobody(...args: string[]): Promise<Record<string, number | boolean | string>> {
  return new Promise((resolve, reject) => {
    const child = spawn(NOBODY[0] as string, [...NOBODY.slice(1), process.execPath, CLIENT, ...args], {
      stdio: ["ignore", "pipe", "inherit"],
    });
    let out = "";
    child.stdout.on("data", (d: Buffer) => {
      out += d.toString();
    });
    child.on("exit", (code) => (code === 0 ? resolve(JSON.parse(out)) : reject(new Error(`client exited ${code}`))));
  });
}

function rssKb(pid: number): number {
  const line = readFileSync(`/proc/${pid}/status`, "utf8")
    .split("\n")
    .find((l) => l.startsWith("VmRSS:"));
  return Number(line?.split(/\s+/)[1]);
}

/** Runs the bundle on the scratch directory prepared by the test (fixture.run would make a new one). */
function runHere(args: string[], env: NodeJS.ProcessEnv = {}) {
  return runBundle([`--runtime-dir=${fixture.scratch.runtimeDir}`, ...args], fixture.env(env));
}

/** A daemon whose sockets nobody can reach (the scratch directory is 0700 by default). */
async function reachableDaemon(extraEnv: NodeJS.ProcessEnv = {}) {
  fixture.prepare();
  chmodSync(fixture.scratch.dir, 0o755);
  const d = fixture.spawn(["--simulate=2"], extraEnv);
  await d.waitReady();
  return {
    d,
    rpc: join(fixture.scratch.runtimeDir, "socket"),
    control: join(fixture.scratch.runtimeDir, "gpu-persistd.sock"),
  };
}

describe("memory per client", () => {
  it("a client that pipelines calls and never reads cannot grow the daemon (heap limited as in the DaemonSet)", async () => {
    const { d, rpc } = await reachableDaemon({ NODE_OPTIONS: "--max-old-space-size=64" });
    const before = rssKb(d.pid);
    const result = await asNobody("flood", rpc, frameRecord(getCall(1)).toString("hex"), "4");
    const after = rssKb(d.pid);
    // Without backpressure the daemon queued every reply: ~300 MB a minute, dead in 18 s at 200 MB.
    expect(Number(result.written)).toBeGreaterThan(100_000);
    expect(after - before).toBeLessThan(20 * 1024);
    expect(d.child.exitCode).toBeNull();
    expect(await rpcGet(rpc, 2)).toBe(1);
  });

  it("a half-closed client still gets a reply to every call it sent", async () => {
    const { rpc } = await reachableDaemon();
    const result = await asNobody("halfclose", rpc, frameRecord(getCall(1)).toString("hex"), "5000");
    expect(result).toEqual({ replies: 5000 });
  });
});

describe("connection slots", () => {
  it("one user cannot take every connection: root still gets status and RPC; unfinished records end at the deadline", async () => {
    const { d, rpc, control } = await reachableDaemon();
    const hog = asNobody("slots", rpc, "300", "7");
    const controlHog = asNobody("slots", control, "20", "7");
    // While the hog holds its 256 RPC slots and 8 control slots, root is served.
    await new Promise((r) => setTimeout(r, 1500));
    expect(await rpcGet(rpc, 3)).toBe(1);
    expect(statusJson(fixture.scratch.runtimeDir).devices).toHaveLength(2);
    const [rpcResult, controlResult] = await Promise.all([hog, controlHog]);
    // Beyond the per-uid cap, refused at once; the rest closed at the 5 s record deadline
    // although a byte arrived every 300 ms.
    expect(rpcResult).toMatchObject({ opened: 300, closedEarly: 44, closed: 300 });
    expect(controlResult).toMatchObject({ opened: 20, closedEarly: 12, closed: 20 });
    expect(d.output).toMatch(
      /RPC: rejected a request from pid \d+ \(uid 65534\): uid 65534 already has 256 connections open/,
    );
  });
});

describe("log lines from clients", () => {
  it("bad control requests are quoted, cannot forge a line, and are rate-limited", async () => {
    const { d, control } = await reachableDaemon();
    expect(await asNobody("control", control, "200")).toEqual({ answered: 200 });
    await d.waitFor("control socket: rejected");
    const rejected = d.output.split("\n").filter((l) => l.includes("control socket: rejected"));
    expect(rejected.length).toBeLessThanOrEqual(20);
    expect(rejected[0]).toContain('unknown command "x\\nFATAL forged line"');
    expect(d.output).not.toMatch(/^FATAL forged line/m);
  });
});

describe("runtime files", () => {
  it("refuses a runtime directory another user owns, saying what to do", () => {
    fixture.prepare();
    mkdirSync(fixture.scratch.runtimeDir);
    chownSync(fixture.scratch.runtimeDir, 65534, 65534);
    const result = runHere(["--simulate=1"]);
    expect(result.code).toBe(78);
    expect(result.stderr).toContain(`${fixture.scratch.runtimeDir} belongs to uid 65534, not to this daemon (uid 0)`);
    expect(result.stderr).toContain(`rm -r ${fixture.scratch.runtimeDir}`);
  });

  it("refuses a world-writable runtime directory", () => {
    fixture.prepare();
    mkdirSync(fixture.scratch.runtimeDir);
    chmodSync(fixture.scratch.runtimeDir, 0o777);
    const result = runHere(["--simulate=1"]);
    expect(result.code).toBe(78);
    expect(result.stderr).toContain("is writable by other users (mode 777)");
  });

  it("never follows a link planted as the PID file or the stand-in device directory", () => {
    for (const name of ["nvidia-persistenced.pid", "sim-dev"]) {
      fixture.prepare();
      const victim = join(fixture.scratch.dir, "victim");
      writeFileSync(victim, "root's file\n");
      chmodSync(victim, 0o600);
      mkdirSync(fixture.scratch.runtimeDir);
      symlinkSync(victim, join(fixture.scratch.runtimeDir, name));
      const result = runHere(["--simulate=1"]);
      expect(result.code, result.output).toBe(78);
      expect(result.output).toContain("symbolic link");
      expect(readFileSync(victim, "utf8")).toBe("root's file\n");
      expect(execFileSync("stat", ["-c", "%a", victim]).toString().trim()).toBe("600");
    }
  });

  it("a read lock another user holds on a stale PID file does not block the restart", async () => {
    const { d } = await reachableDaemon();
    await d.stop("SIGKILL");
    const pidFile = join(fixture.scratch.runtimeDir, "nvidia-persistenced.pid");
    // nobody reads the file (0644) and holds a shared lock on it, forever.
    const locker = spawn(
      NOBODY[0] as string,
      [
        ...NOBODY.slice(1),
        "/usr/bin/python3",
        "-c",
        `import fcntl,time,sys\nf=open(${JSON.stringify(pidFile)})\nfcntl.lockf(f, fcntl.LOCK_SH)\nprint("locked",flush=True)\ntime.sleep(60)`,
      ],
      { stdio: ["ignore", "pipe", "inherit"] },
    );
    try {
      await new Promise<void>((resolve) => locker.stdout.once("data", () => resolve()));
      const again = fixture.spawn(["--simulate=2"]);
      await again.waitReady();
      expect(readFileSync(pidFile, "utf8")).toBe(`${again.pid}\n`);
    } finally {
      locker.kill("SIGKILL");
    }
  });
});

describe("bad settings end with 78 and the fix", () => {
  it("a runtime directory too long for a socket path", () => {
    fixture.prepare();
    const long = join(fixture.scratch.dir, "x".repeat(100));
    const result = runHere(["--simulate=1", `--runtime-dir=${long}`]);
    expect(result.code).toBe(78);
    expect(result.stderr).toMatch(/a unix socket path holds at most 107\. Choose a shorter --runtime-dir/);
    expect(result.stderr).not.toContain("    at ");
  });

  it("a directory where a socket goes", () => {
    fixture.prepare();
    mkdirSync(join(fixture.scratch.runtimeDir, "socket"), { recursive: true });
    const result = runHere(["--simulate=1"]);
    expect(result.code).toBe(78);
    expect(result.output).toContain(`${join(fixture.scratch.runtimeDir, "socket")} is a directory, not a socket`);
    expect(result.output).not.toContain("    at ");
  });

  it("a config file that is a device or a FIFO: refused at once, no hang", () => {
    fixture.prepare();
    const fifo = join(fixture.scratch.dir, "config.fifo");
    execFileSync("mkfifo", [fifo]);
    for (const path of ["/dev/zero", fifo]) {
      const result = runHere(["--simulate=1", `--config=${path}`]);
      expect(result.code, result.output).toBe(78);
      expect(result.stderr).toContain(`${path} is not a regular file`);
    }
  });

  it("a timer longer than Node's timers hold", () => {
    const result = fixture.run(["--simulate=1"], {}, { GPU_PERSISTD_HEALTH_INTERVAL_MS: "3000000000" });
    expect(result.code).toBe(78);
    expect(result.stderr).toContain("healthIntervalMs: must be an integer from 1 to 2147483647");
  });
});
