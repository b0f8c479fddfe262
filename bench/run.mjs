// gpu-persistd's benchmarks on the simulator. Every figure is measured beside its baseline
// in the same run (parallel vs serial bring-up, the daemon vs a bare Node process), over
// RUNS runs, median reported. Prints a table, or one JSON object with --json; --save
// writes it to bench/results/sim-<date>.json.
//
//   npm run bench [-- --json] [-- --save]
import { execFileSync, spawn, spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import { join, resolve } from "node:path";

const ROOT = resolve(import.meta.dirname, "..");
const BUNDLE = join(ROOT, "dist/gpu-persistd.mjs");
const RUNS = Number(process.env.BENCH_RUNS ?? 3);
const ATTACH_DELAY_MS = 500;
const IDLE_CPU_SECONDS = Number(process.env.BENCH_IDLE_SECONDS ?? 30);
const args = new Set(process.argv.slice(2));

const progress = (what) => process.stderr.write(`bench: ${what}\n`);
const median = (values) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)];
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const scratch = mkdtempSync(join(os.tmpdir(), "gpu-persistd-bench-"));
const emptyConfig = join(scratch, "config.json");
writeFileSync(emptyConfig, "{}");

function rssKb(pid) {
  return Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))[1]);
}

function cpuMs(pid) {
  const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1].split(" ");
  const ticks = Number(fields[11]) + Number(fields[12]);
  return (ticks * 1000) / 100; // USER_HZ is 100 on Linux
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

/** Starts the daemon on N simulated GPUs; resolves once READY=1 arrives, with the time it took. */
async function startDaemon(gpus, { serial = false, env = {} } = {}) {
  const dir = mkdtempSync(join(scratch, "run-"));
  const simConfig = join(dir, "sim.json");
  writeFileSync(simConfig, JSON.stringify({ attachDelayMs: ATTACH_DELAY_MS }));
  const notify = await notifyReceiver(join(dir, "notify"));
  const ready = notify.nextReady();
  const started = performance.now();
  const child = spawn(process.execPath, [BUNDLE, `--simulate=${gpus}`, `--runtime-dir=${join(dir, "run")}`], {
    env: {
      PATH: process.env.PATH,
      GPU_PERSISTD_CONFIG: emptyConfig,
      GPU_PERSISTD_SIM_CONFIG: simConfig,
      NOTIFY_SOCKET: join(dir, "notify"),
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

async function readyMs(gpus, serial = false) {
  const runs = [];
  for (let i = 0; i < RUNS; i++) {
    const d = await startDaemon(gpus, { serial });
    runs.push(d.readyMs);
    await d.stop();
  }
  return median(runs);
}

function tirpcClient() {
  const out = join(scratch, "tirpc-client");
  const { cc } = JSON.parse(readFileSync(join(ROOT, "test/rpc/tirpc-client.build.json"), "utf8"));
  execFileSync("cc", [...cc, "-o", out, join(ROOT, "test/rpc/tirpc-client.c"), "-ltirpc"]);
  return out;
}

async function main() {
  const result = {
    machine: `${os.cpus()[0]?.model ?? "unknown CPU"}, ${os.cpus().length} cores, ${Math.round(os.totalmem() / 2 ** 30)} GiB, ${os.release()}, node ${process.version}`,
    date: new Date().toISOString().slice(0, 10),
    runs: RUNS,
    attach_delay_ms: ATTACH_DELAY_MS,
  };
  progress("ready time");
  result.ready_ms_1 = await readyMs(1);
  result.ready_ms_8 = await readyMs(8);
  result.ready_ms_64 = await readyMs(64);
  result.serial_ready_ms_8 = await readyMs(8, true);

  progress("RSS and stop");
  // RSS of the idle daemon on 8 GPUs beside a bare idle Node process.
  const rss = [];
  const bare = [];
  const stops = [];
  for (let i = 0; i < RUNS; i++) {
    const d = await startDaemon(8);
    const idle = spawn(process.execPath, ["-e", "setInterval(() => {}, 1000)"], { stdio: "ignore" });
    await sleep(3000);
    rss.push(rssKb(d.pid) / 1024);
    bare.push(rssKb(idle.pid) / 1024);
    idle.kill("SIGKILL");
    stops.push(await d.stop());
  }
  result.rss_mb = median(rss);
  result.bare_node_rss_mb = median(bare);
  result.stop_ms = median(stops);

  progress("idle CPU");
  // Idle CPU with the watchdog on: health checks gate WATCHDOG=1 every second.
  const d = await startDaemon(8, { env: { WATCHDOG_USEC: "2000000" } });
  await sleep(2000);
  const cpu0 = cpuMs(d.pid);
  await sleep(IDLE_CPU_SECONDS * 1000);
  result.idle_cpu_ms_per_min = ((cpuMs(d.pid) - cpu0) * 60) / IDLE_CPU_SECONDS;
  await d.stop();

  // RPC through libtirpc: 10,000 Gets, one connection each as NVML makes them; then 100
  // concurrent clients of 100 Gets each.
  progress("RPC");
  const client = tirpcClient();
  const r = await startDaemon(8);
  const socket = join(r.runtimeDir, "socket");
  const bench = JSON.parse(spawnSync(client, [socket, "bench", "10000", "0", "6", "0"], { encoding: "utf8" }).stdout);
  result.rpc_get_p50_us = bench.p50_us;
  result.rpc_get_p99_us = bench.p99_us;
  const t0 = performance.now();
  const failures = [];
  await Promise.all(
    Array.from(
      { length: 100 },
      () =>
        new Promise((resolvePromise) => {
          const c = spawn(client, [socket, "bench", "100", "0", "6", "0"], { stdio: ["ignore", "pipe", "inherit"] });
          let out = "";
          c.stdout.on("data", (d) => {
            out += d;
          });
          c.on("exit", (code) => {
            if (code !== 0) failures.push(out.trim());
            resolvePromise();
          });
        }),
    ),
  );
  result.rpc_concurrent_per_s = 10_000 / ((performance.now() - t0) / 1000);
  result.rpc_concurrent_failed_clients = failures.length;
  if (failures.length) progress(`failed clients: ${failures.slice(0, 3).join(" | ")}`);
  await r.stop();

  for (const [k, v] of Object.entries(result)) if (typeof v === "number") result[k] = Math.round(v * 10) / 10;
  result.ratios = {
    ready_8_over_1: Math.round((result.ready_ms_8 / result.ready_ms_1) * 100) / 100,
    serial_8_over_parallel_8: Math.round((result.serial_ready_ms_8 / result.ready_ms_8) * 100) / 100,
    rss_over_bare_node: Math.round((result.rss_mb / result.bare_node_rss_mb) * 100) / 100,
  };
  result.targets = {
    "ready(8)/ready(1) <= 1.15": result.ratios.ready_8_over_1 <= 1.15,
    "ready(64) <= 1.5 x 500 ms + 300 ms": result.ready_ms_64 <= 1050,
    "rss <= 1.3 x bare Node": result.ratios.rss_over_bare_node <= 1.3,
    "stop <= 100 ms": result.stop_ms <= 100,
    "rpc p99 <= 1 ms": result.rpc_get_p99_us <= 1000,
  };
  if (args.has("--save")) {
    mkdirSync(join(ROOT, "bench/results"), { recursive: true });
    writeFileSync(join(ROOT, `bench/results/sim-${result.date}.json`), `${JSON.stringify(result, null, 2)}\n`);
  }
  if (args.has("--json")) {
    console.log(JSON.stringify(result));
  } else {
    console.log(`gpu-persistd benchmarks (simulator, median of ${RUNS}) on ${result.machine}`);
    const rows = [
      ["ready, 1 GPU", `${result.ready_ms_1} ms`, ""],
      ["ready, 8 GPUs", `${result.ready_ms_8} ms`, `serial (as nvidia-persistenced): ${result.serial_ready_ms_8} ms`],
      ["ready, 64 GPUs", `${result.ready_ms_64} ms`, `each GPU's attach takes ${ATTACH_DELAY_MS} ms`],
      ["RSS, idle, 8 GPUs", `${result.rss_mb} MB`, `bare Node: ${result.bare_node_rss_mb} MB`],
      ["idle CPU, watchdog on", `${result.idle_cpu_ms_per_min} ms/min`, ""],
      ["SIGTERM to exit", `${result.stop_ms} ms`, ""],
      [
        "RPC Get p50 / p99",
        `${result.rpc_get_p50_us} / ${result.rpc_get_p99_us} us`,
        "libtirpc, a connection per call",
      ],
      ["RPC, 100 clients", `${Math.round(result.rpc_concurrent_per_s)} calls/s`, ""],
    ];
    for (const [name, value, note] of rows) console.log(`  ${name.padEnd(24)} ${value.padEnd(20)} ${note}`);
    for (const [target, met] of Object.entries(result.targets))
      console.log(`  target ${met ? "met   " : "MISSED"} ${target}`);
  }
}

try {
  await main();
} finally {
  rmSync(scratch, { recursive: true, force: true });
}
