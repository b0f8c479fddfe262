// gpu-persistd's benchmarks on the simulator. The daemon starts as the package starts it
// (the installed launcher, the unit's NODE_OPTIONS=--jitless, a real notify socket), and
// every figure is measured beside its baseline in the same run: a bare Node process with the
// same flags, `node -e 0`, serial bring-up, a minimal C server answering the same RPC call.
// Prints a table, or one JSON object with --json; --save writes bench/results/sim-<date>.json;
// --check exits 1 when a target is missed.
//
//   npm run bench [-- --json] [-- --save] [-- --check]    (npm run bench --json works too)
import { execFile, execFileSync, spawn, spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { connect } from "node:net";
import os from "node:os";
import { join, resolve } from "node:path";
import { promisify } from "node:util";

const ROOT = resolve(import.meta.dirname, "..");
const RUNS = Number(process.env.BENCH_RUNS ?? 3);
const ATTACH_DELAY_MS = 500;
const IDLE_SECONDS = Number(process.env.BENCH_IDLE_SECONDS ?? 60);
const RPC_CALLS = Number(process.env.BENCH_RPC_CALLS ?? 5000);
const RELEASES = Number(process.env.BENCH_RELEASES ?? 100);
const args = new Set(process.argv.slice(2));
// `npm run bench --json` hands --json (and --save, --check) to npm, which passes them on as npm_config_*.
for (const flag of ["json", "save", "check"]) if (process.env[`npm_config_${flag}`] === "true") args.add(`--${flag}`);
const UNIT_NODE_OPTIONS = "--jitless"; // systemd/gpu-persistd.service: Environment=NODE_OPTIONS=--jitless
const nodeFlags = JSON.parse(readFileSync(join(ROOT, "src/node-flags.json"), "utf8"));

const progress = (what) => process.stderr.write(`bench: ${what}\n`);
const median = (values) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)];
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const scratch = mkdtempSync(join(os.tmpdir(), "gpu-persistd-bench-"));
const emptyConfig = join(scratch, "config.json");
writeFileSync(emptyConfig, "{}");

/** The installed tree (scripts/stage.mjs, for this Node) with its launcher pointed at the tree. */
function launcher() {
  const stage = join(scratch, "stage");
  execFileSync(process.execPath, [join(ROOT, "scripts/stage.mjs"), stage], { cwd: ROOT, stdio: "ignore" });
  const path = join(stage, "usr/bin/gpu-persistd");
  const text = readFileSync(path, "utf8").replace("/usr/lib/gpu-persistd/", `${stage}/usr/lib/gpu-persistd/`);
  writeFileSync(path, text, { mode: 0o755 });
  return path;
}
const LAUNCHER = launcher();

function tasks(pid) {
  return readdirSync(`/proc/${pid}/task`);
}

/** Voluntary + involuntary context switches of every thread of `pid`. */
function contextSwitches(pid) {
  let total = 0;
  for (const t of tasks(pid)) {
    const status = readFileSync(`/proc/${pid}/task/${t}/status`, "utf8");
    for (const m of status.matchAll(/^(?:non)?voluntary_ctxt_switches:\s+(\d+)$/gm)) total += Number(m[1]);
  }
  return total;
}

function cpuMs(pid) {
  const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1].split(" ");
  return ((Number(fields[11]) + Number(fields[12])) * 1000) / 100; // USER_HZ is 100 on Linux
}

/** Private memory (Private_Clean + Private_Dirty of smaps_rollup) and RSS, in MB. */
function memoryMb(pid) {
  const rollup = readFileSync(`/proc/${pid}/smaps_rollup`, "utf8");
  const kb = (key) => Number(new RegExp(`^${key}:\\s+(\\d+)`, "m").exec(rollup)?.[1] ?? 0);
  return { private: (kb("Private_Clean") + kb("Private_Dirty")) / 1024, rss: kb("Rss") / 1024 };
}

/** A stand-in for systemd's notify socket (test/helpers/datagram-receiver.py); resolves on READY=1. */
async function notifyReceiver(path) {
  const child = spawn("python3", [join(ROOT, "test/helpers/datagram-receiver.py"), path], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  const waiters = [];
  let buffered = "";
  let listening;
  const ready = new Promise((r) => {
    listening = r;
  });
  child.stdout.on("data", (chunk) => {
    buffered += chunk;
    for (let nl = buffered.indexOf("\n"); nl >= 0; nl = buffered.indexOf("\n")) {
      const line = buffered.slice(0, nl);
      buffered = buffered.slice(nl + 1);
      if (line === "listening") listening();
      else if (Buffer.from(JSON.parse(line).data, "base64").toString().includes("READY=1")) {
        for (const w of waiters.splice(0)) w(performance.now());
      }
    }
  });
  await ready;
  return { nextReady: () => new Promise((r) => waiters.push(r)), close: () => child.kill("SIGKILL") };
}

/** Starts the daemon through the launcher on N simulated GPUs; resolves once READY=1 arrives. */
async function startDaemon(gpus, { serial = false, attachDelayMs = ATTACH_DELAY_MS, env = {}, attach = false } = {}) {
  const dir = mkdtempSync(join(scratch, "run-"));
  const simConfig = join(dir, "sim.json");
  // attach: the simulated NVML session holds each GPU's stand-in node, as real NVML does.
  writeFileSync(
    simConfig,
    JSON.stringify({ attachDelayMs, ...(attach ? { attachDir: join(dir, "run/sim-dev") } : {}) }),
  );
  const notify = await notifyReceiver(join(dir, "notify"));
  const ready = notify.nextReady();
  const started = performance.now();
  const child = spawn(LAUNCHER, [`--simulate=${gpus}`, `--runtime-dir=${join(dir, "run")}`], {
    env: {
      PATH: process.env.PATH,
      NODE_OPTIONS: UNIT_NODE_OPTIONS,
      GPU_PERSISTD_CONFIG: emptyConfig,
      GPU_PERSISTD_SIM_CONFIG: simConfig,
      NOTIFY_SOCKET: join(dir, "notify"),
      WATCHDOG_USEC: "30000000",
      ...(serial ? { GPU_PERSISTD_BRING_UP_CONCURRENCY: "1" } : {}),
      ...env,
    },
    stdio: "ignore",
  });
  const exited = new Promise((r) => child.on("exit", r));
  const readyAt = await Promise.race([ready, exited.then(() => Promise.reject(new Error("daemon exited")))]);
  return {
    pid: child.pid,
    runtimeDir: join(dir, "run"),
    readyMs: readyAt - started,
    async stop() {
      const t0 = performance.now();
      child.kill("SIGTERM");
      await exited;
      const ms = performance.now() - t0;
      notify.close();
      return ms;
    },
  };
}

async function readyMs(gpus, options = {}) {
  const runs = [];
  for (let i = 0; i < RUNS; i++) {
    const d = await startDaemon(gpus, options);
    runs.push(d.readyMs);
    await d.stop();
  }
  return median(runs);
}

function nodeStartMs() {
  const runs = [];
  for (let i = 0; i < RUNS * 3; i++) {
    const t0 = performance.now();
    spawnSync(process.execPath, [...nodeFlags.v8, "-e", "0"], { env: { NODE_OPTIONS: UNIT_NODE_OPTIONS } });
    runs.push(performance.now() - t0);
  }
  return median(runs);
}

/** Idle figures of the daemon on 8 GPUs beside a bare Node with the same flags, over IDLE_SECONDS. */
async function idle(watchdogUsec) {
  const d = await startDaemon(8, { attachDelayMs: 0, env: { WATCHDOG_USEC: String(watchdogUsec) } });
  const bare = spawn(process.execPath, [...nodeFlags.v8, "-e", "setInterval(() => {}, 1 << 30)"], {
    env: { NODE_OPTIONS: UNIT_NODE_OPTIONS },
    stdio: "ignore",
  });
  await sleep(3000);
  const cs0 = contextSwitches(d.pid);
  const cpu0 = cpuMs(d.pid);
  await sleep(IDLE_SECONDS * 1000);
  const result = {
    threads: tasks(d.pid).length,
    wakeupsPerS: (contextSwitches(d.pid) - cs0) / IDLE_SECONDS,
    cpuMsPerMin: ((cpuMs(d.pid) - cpu0) * 60) / IDLE_SECONDS,
    memory: memoryMb(d.pid),
    bare: memoryMb(bare.pid),
    bareThreads: tasks(bare.pid).length,
  };
  bare.kill("SIGKILL");
  await d.stop();
  return result;
}

/** SIGTERM at a random moment (not aligned to any period) to exit, 8 GPUs. */
async function stopMs() {
  const runs = [];
  for (let i = 0; i < RUNS * 2; i++) {
    const d = await startDaemon(8, { attachDelayMs: 0 });
    await sleep(500 + Math.random() * 3000);
    runs.push(await d.stop());
  }
  return median(runs);
}

function build(source, out, extra = []) {
  execFileSync("cc", [...extra, "-o", out, source, ...(source.includes("tirpc") ? ["-ltirpc"] : [])]);
  return out;
}

/**
 * The libtirpc client's JSON. Run asynchronously: this process must keep reading the notify
 * receiver's output meanwhile, or the receiver stops draining the daemon's notify socket (as
 * PID 1 never does), and the daemon waits for room there.
 */
async function tirpc(client, args) {
  return JSON.parse((await promisify(execFile)(client, args, { encoding: "utf8" })).stdout);
}

/** p50/p99 of RPC_CALLS Gets through libtirpc, one connection each, against `socket`. */
function rpcBench(client, socket) {
  return tirpc(client, [socket, "bench", String(RPC_CALLS), "0", "6", "0"]);
}

async function rpc() {
  const { cc } = JSON.parse(readFileSync(join(ROOT, "test/rpc/tirpc-client.build.json"), "utf8"));
  const client = build(join(ROOT, "test/rpc/tirpc-client.c"), join(scratch, "tirpc-client"), cc);
  const floorServer = build(join(ROOT, "bench/floor-server.c"), join(scratch, "floor-server"), ["-O2"]);
  const floorSocket = join(scratch, "floor.sock");
  const floor = spawn(floorServer, [floorSocket], { stdio: ["ignore", "pipe", "inherit"] });
  await new Promise((r) => floor.stdout.once("data", r));
  const floorResult = await rpcBench(client, floorSocket);
  floor.kill("SIGKILL");
  const d = await startDaemon(8, { attachDelayMs: 0 });
  const ours = await rpcBench(client, join(d.runtimeDir, "socket"));
  await d.stop();
  return { ours, floor: floorResult };
}

const percentile = (values, p) =>
  [...values].sort((a, b) => a - b)[Math.min(values.length - 1, Math.floor((values.length * p) / 100))];

/** `gpu-persistd release 0 -- COMMAND` as its client does it: ms to the release's answer, and to the re-hold's once the client ends. */
function leaseOnce(controlSocket) {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    let released = 0;
    let buffered = "";
    const socket = connect(controlSocket, () => socket.write('{"command":"release","gpus":["0"]}\n'));
    socket.setEncoding("utf8");
    socket.on("error", reject);
    socket.on("data", (chunk) => {
      buffered += chunk;
      for (let nl = buffered.indexOf("\n"); nl >= 0; nl = buffered.indexOf("\n")) {
        const line = JSON.parse(buffered.slice(0, nl));
        buffered = buffered.slice(nl + 1);
        if (line.error) reject(new Error(line.error));
        else if (line.released) {
          released = performance.now();
          socket.end();
        } else if (line.held) resolve({ release: released - t0, rehold: performance.now() - released });
      }
    });
  });
}

/** Release and re-hold with the shipped defaults on 8 GPUs, the NVML session attaching every GPU. */
async function releases() {
  const { cc } = JSON.parse(readFileSync(join(ROOT, "test/rpc/tirpc-client.build.json"), "utf8"));
  const client = build(join(ROOT, "test/rpc/tirpc-client.c"), join(scratch, "tirpc-client"), cc);
  const d = await startDaemon(8, { attachDelayMs: 0, attach: true });
  const socket = join(d.runtimeDir, "socket");
  const toggle = (vers) => tirpc(client, [socket, "toggle", String(RELEASES), String(vers), "0", "6", "0"]);
  const v2 = await toggle(2);
  const v1 = await toggle(1);
  const leases = [];
  for (let i = 0; i < RELEASES; i++) leases.push(await leaseOnce(join(d.runtimeDir, "gpu-persistd.sock")));
  await d.stop();
  if (v2.error || v1.error) throw new Error(`release bench: ${v2.error ?? v1.error}`);
  const ms = (us) => us / 1000;
  return {
    release_rpc_v2_p50_ms: ms(v2.disable_p50_us),
    release_rpc_v2_p99_ms: ms(v2.disable_p99_us),
    rehold_rpc_v2_p50_ms: ms(v2.enable_p50_us),
    rehold_rpc_v2_p99_ms: ms(v2.enable_p99_us),
    release_rpc_v1_p50_ms: ms(v1.disable_p50_us),
    release_rpc_v1_p99_ms: ms(v1.disable_p99_us),
    rehold_rpc_v1_p50_ms: ms(v1.enable_p50_us),
    rehold_rpc_v1_p99_ms: ms(v1.enable_p99_us),
    release_lease_p50_ms: percentile(
      leases.map((l) => l.release),
      50,
    ),
    release_lease_p99_ms: percentile(
      leases.map((l) => l.release),
      99,
    ),
    rehold_lease_p50_ms: percentile(
      leases.map((l) => l.rehold),
      50,
    ),
    rehold_lease_p99_ms: percentile(
      leases.map((l) => l.rehold),
      99,
    ),
  };
}

async function main() {
  const result = {
    machine: `${os.cpus()[0]?.model ?? "unknown CPU"}, ${os.cpus().length} cores, ${Math.round(os.totalmem() / 2 ** 30)} GiB, ${os.release()}, node ${process.version}`,
    date: new Date().toISOString().slice(0, 10),
    runs: RUNS,
    idle_seconds: IDLE_SECONDS,
    attach_delay_ms: ATTACH_DELAY_MS,
  };
  progress("start: node -e 0, and READY with 1 GPU (no attach delay)");
  result.node_start_ms = nodeStartMs();
  result.ready_ms_1 = await readyMs(1, { attachDelayMs: 0 });
  progress(`READY with 1, 8 and 64 GPUs at ${ATTACH_DELAY_MS} ms attach, and 8 serially`);
  result.ready_ms_1_attach = await readyMs(1);
  result.ready_ms_8 = await readyMs(8);
  result.ready_ms_64 = await readyMs(64);
  result.serial_ready_ms_8 = await readyMs(8, { serial: true });
  progress(`idle for ${IDLE_SECONDS} s, WATCHDOG_USEC 30 s, then 2 s`);
  const idle30 = await idle(30_000_000);
  const idle2 = await idle(2_000_000);
  Object.assign(result, {
    threads: idle30.threads,
    bare_node_threads: idle30.bareThreads,
    idle_wakeups_per_s: idle30.wakeupsPerS,
    idle_cpu_ms_per_min: idle30.cpuMsPerMin,
    private_mb: idle30.memory.private,
    rss_mb: idle30.memory.rss,
    bare_node_private_mb: idle30.bare.private,
    bare_node_rss_mb: idle30.bare.rss,
    watchdog_2s_wakeups_per_s: idle2.wakeupsPerS,
    watchdog_2s_cpu_ms_per_min: idle2.cpuMsPerMin,
  });
  progress("stop at random moments");
  result.stop_ms = await stopMs();
  progress(`RPC: ${RPC_CALLS} Gets through libtirpc, against the daemon and the C floor`);
  const r = await rpc();
  Object.assign(result, {
    rpc_get_p50_us: r.ours.p50_us,
    rpc_get_p99_us: r.ours.p99_us,
    rpc_floor_p50_us: r.floor.p50_us,
    rpc_floor_p99_us: r.floor.p99_us,
  });

  progress(
    `releases: ${RELEASES} RPC v2 and v1 Set DISABLED/ENABLED, and ${RELEASES} release -- COMMAND leases, 8 GPUs, shipped defaults`,
  );
  Object.assign(result, await releases());

  for (const [k, v] of Object.entries(result)) if (typeof v === "number") result[k] = Math.round(v * 100) / 100;
  result.targets = {
    "threads <= 12": result.threads <= 12,
    "idle wake-ups <= 0.5/s": result.idle_wakeups_per_s <= 0.5,
    "idle CPU <= 15 ms/min": result.idle_cpu_ms_per_min <= 15,
    "private memory <= 2 x bare Node": result.private_mb <= 2 * result.bare_node_private_mb,
    "SIGTERM to exit <= 30 ms": result.stop_ms <= 30,
    "READY(1) <= 1.6 x node -e 0 + NVML init": result.ready_ms_1 <= 1.6 * result.node_start_ms + 10,
    "RPC p50 <= 2 x the C floor": result.rpc_get_p50_us <= 2 * result.rpc_floor_p50_us,
    "READY(8)/READY(1) at 500 ms attach <= 1.15": result.ready_ms_8 / result.ready_ms_1_attach <= 1.15,
    "READY(64) <= 1.5 x 500 ms + 300 ms": result.ready_ms_64 <= 1050,
    "release and re-hold p99 <= 100 ms (RPC v1, v2, lease)": [
      "release_rpc_v2_p99_ms",
      "rehold_rpc_v2_p99_ms",
      "release_rpc_v1_p99_ms",
      "rehold_rpc_v1_p99_ms",
      "release_lease_p99_ms",
      "rehold_lease_p99_ms",
    ].every((k) => result[k] <= 100),
  };
  if (args.has("--save")) {
    mkdirSync(join(ROOT, "bench/results"), { recursive: true });
    writeFileSync(join(ROOT, `bench/results/sim-${result.date}.json`), `${JSON.stringify(result, null, 2)}\n`);
  }
  if (args.has("--json")) {
    console.log(JSON.stringify(result));
  } else {
    console.log(`gpu-persistd benchmarks (simulator, through the launcher, median of ${RUNS}) on ${result.machine}`);
    const rows = [
      ["threads, idle, 8 GPUs", `${result.threads}`, `bare Node: ${result.bare_node_threads}`],
      ["wake-ups/s, idle", `${result.idle_wakeups_per_s}`, `WATCHDOG_USEC 2 s: ${result.watchdog_2s_wakeups_per_s}`],
      [
        "CPU, idle",
        `${result.idle_cpu_ms_per_min} ms/min`,
        `WATCHDOG_USEC 2 s: ${result.watchdog_2s_cpu_ms_per_min} ms/min`,
      ],
      [
        "private memory",
        `${result.private_mb} MB`,
        `bare Node: ${result.bare_node_private_mb} MB (RSS ${result.rss_mb} vs ${result.bare_node_rss_mb} MB)`,
      ],
      ["SIGTERM to exit", `${result.stop_ms} ms`, "at random moments"],
      ["READY, 1 GPU", `${result.ready_ms_1} ms`, `node -e 0: ${result.node_start_ms} ms`],
      [
        "READY, 8 / 64 GPUs",
        `${result.ready_ms_8} / ${result.ready_ms_64} ms`,
        `${ATTACH_DELAY_MS} ms attach each; 8 serially: ${result.serial_ready_ms_8} ms`,
      ],
      [
        "RPC Get p50 / p99",
        `${result.rpc_get_p50_us} / ${result.rpc_get_p99_us} us`,
        `C floor: ${result.rpc_floor_p50_us} / ${result.rpc_floor_p99_us} us`,
      ],
      [
        "release p50 / p99",
        `${result.release_rpc_v2_p50_ms} / ${result.release_rpc_v2_p99_ms} ms`,
        `RPC v2 Set DISABLED; v1: ${result.release_rpc_v1_p50_ms} / ${result.release_rpc_v1_p99_ms}; lease: ${result.release_lease_p50_ms} / ${result.release_lease_p99_ms}`,
      ],
      [
        "re-hold p50 / p99",
        `${result.rehold_rpc_v2_p50_ms} / ${result.rehold_rpc_v2_p99_ms} ms`,
        `RPC v2 Set ENABLED; v1: ${result.rehold_rpc_v1_p50_ms} / ${result.rehold_rpc_v1_p99_ms}; lease end: ${result.rehold_lease_p50_ms} / ${result.rehold_lease_p99_ms}`,
      ],
    ];
    for (const [name, value, note] of rows) console.log(`  ${name.padEnd(24)} ${value.padEnd(20)} ${note}`);
    for (const [target, met] of Object.entries(result.targets)) {
      console.log(`  target ${met ? "met   " : "MISSED"} ${target}`);
    }
  }
  if (args.has("--check") && Object.values(result.targets).some((met) => !met)) process.exitCode = 1;
}

try {
  await main();
} finally {
  rmSync(scratch, { recursive: true, force: true });
}
