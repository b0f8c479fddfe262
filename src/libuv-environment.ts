// libuv reads its settings from the environment once, when the loop and the thread pool
// start, and Node's ESM loader starts them before the bundle's first line: setting them
// from inside is too late. So when one is unset, the daemon re-executes itself with it set
// (same PID). The installed command (/usr/bin/gpu-persistd, written by scripts/stage.mjs from
// the same src/node-flags.json) sets them already, so only `node dist/gpu-persistd.mjs` pays
// for the re-exec.
// - UV_THREADPOOL_SIZE: one pool thread per GPU (at least `min`): every blocking NVML call
//   runs on the pool (koffi fn.async), and bring-up asks every GPU at once. GPUs are counted
//   as the PCI devices bound to the nvidia driver in sysfs: the unit's ProcSubset=pid hides
//   /proc/driver/nvidia (measured: test/gpu/proc-subset.sh). The launcher counts the same way
//   before Node starts.
// - UV_USE_IO_URING=0: no io_uring ring may carry root's credentials past the privilege
//   drop (CVE-2024-22017); libuv 1.45 to 1.48 use io_uring by default.
// The re-exec also passes the V8 flags: a 1 MB young generation instead of 16 (an idle
// daemon's RSS stays near its floor), one V8 worker thread instead of one per core, and no
// memory reducer (its timers woke an idle daemon about twice a second: 95 against 24 context
// switches in 30 s, measured with bench/). Only flags every supported Node accepts (18 to 24;
// 24 refuses --no-expose-wasm, for example).
import { readdirSync } from "node:fs";
import { execve } from "../native-bindings/libc.js";
import nodeFlags from "./node-flags.json" with { type: "json" };

const ENV: Readonly<Record<string, string>> = nodeFlags.env;
const V8_FLAGS: readonly string[] = nodeFlags.v8;

/** Where sysfs lists the PCI devices bound to the nvidia driver (0000:1b:00.0 and the like). */
export const NVIDIA_PCI_DRIVER_DIR = "/sys/bus/pci/drivers/nvidia";

/** GPUs the pool is sized for: the driver's GPUs, or the simulated count. */
function gpuCount(argv: readonly string[], env: NodeJS.ProcessEnv, driverDir: string): number {
  const simulate =
    [...argv]
      .reverse()
      .find((a) => a.startsWith("--simulate="))
      ?.slice(11) ?? env.GPU_PERSISTD_SIMULATE;
  if (simulate === "dgx-h100") return 8;
  if (simulate && /^\d+$/.test(simulate)) return Number(simulate);
  try {
    return readdirSync(driverDir).filter((name) => /^[0-9a-f]{4,8}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$/i.test(name)).length;
  } catch {
    return 0;
  }
}

/** UV_THREADPOOL_SIZE for this host: one thread per GPU, within node-flags.json's bounds. */
export function threadPoolSize(
  argv: readonly string[],
  env: NodeJS.ProcessEnv,
  driverDir = NVIDIA_PCI_DRIVER_DIR,
): number {
  const { min, max } = nodeFlags.threadpool;
  return Math.min(max, Math.max(min, gpuCount(argv, env, driverDir)));
}

/** Returns normally when every variable is set; otherwise never returns, or throws. */
export function ensureLibuvEnvironment(): void {
  const wanted = { ...ENV, UV_THREADPOOL_SIZE: String(threadPoolSize(process.argv, process.env)) };
  const missing = Object.keys(wanted).filter((name) => process.env[name] === undefined);
  if (!missing.length) return;
  const env = { ...wanted, ...process.env };
  const argv = [process.execPath, ...process.execArgv, ...V8_FLAGS, ...process.argv.slice(1)];
  const code = execve(process.execPath, argv, env);
  throw new Error(`cannot re-execute ${process.execPath} with ${missing.join(", ")} set: ${code}`);
}
