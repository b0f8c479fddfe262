// libuv reads its settings from the environment once, when the loop and the thread pool
// start, and Node's ESM loader starts them before the bundle's first line: setting them
// from inside is too late. So when one is unset, the daemon re-executes itself with it set
// (same PID). The installed command's shebang sets them already (scripts/build.mjs reads
// the same file), so only `node dist/gpu-persistd.mjs` pays for the re-exec.
// - UV_THREADPOOL_SIZE=128: every blocking NVML call runs on the pool (koffi fn.async), 4
//   threads by default.
// - UV_USE_IO_URING=0: no io_uring ring may carry root's credentials past the privilege
//   drop (CVE-2024-22017); libuv 1.45 to 1.48 use io_uring by default.
// The re-exec also passes the shebang's V8 flags: a 1 MB young generation instead of 16, so
// an idle daemon's RSS stays near its floor rather than saw-toothing between scavenges. Only
// flags every supported Node accepts (18 to 24; 24 refuses --no-expose-wasm, for example).
import { execve } from "../native-bindings/libc.js";
import nodeFlags from "./node-flags.json" with { type: "json" };

const ENV: Readonly<Record<string, string>> = nodeFlags.env;
const V8_FLAGS: readonly string[] = nodeFlags.v8;

/** Returns normally when every variable is set; otherwise never returns, or throws. */
export function ensureLibuvEnvironment(): void {
  const missing = Object.keys(ENV).filter((name) => process.env[name] === undefined);
  if (!missing.length) return;
  const env = { ...ENV, ...process.env };
  const argv = [process.execPath, ...process.execArgv, ...V8_FLAGS, ...process.argv.slice(1)];
  const code = execve(process.execPath, argv, env);
  throw new Error(`cannot re-execute ${process.execPath} with ${missing.join(", ")} set: ${code}`);
}
