// Every blocking NVML call runs on libuv's thread pool (koffi fn.async), 4 threads unless
// UV_THREADPOOL_SIZE says otherwise when the pool starts. Node's ESM loader starts it
// before the bundle's first line, so setting the variable from inside is too late: when it
// is unset, the daemon re-executes itself with it set (same PID). The installed command's
// shebang sets it already, so only `node dist/gpu-persistd.mjs` pays for the re-exec. The
// re-exec also passes the V8 flags the shebang gives.
import { execve } from "../native-bindings/libc.js";
import nodeFlags from "./node-flags.json" with { type: "json" };

export const THREAD_POOL_SIZE = 128;
/**
 * The shebang's V8 flags (scripts/build.mjs reads the same file). A 1 MB young generation
 * instead of 16: an idle daemon's RSS then stays near its floor rather than saw-toothing by
 * tens of MB between scavenges. Only flags every supported Node accepts (18 to 24): Node 24
 * refuses --no-expose-wasm, which would silence 18's and 20's one line about --jitless.
 */
const V8_FLAGS: readonly string[] = nodeFlags.v8;

/** Returns normally when the pool size is already set; otherwise never returns, or throws. */
export function ensureThreadPoolSize(): void {
  if (process.env.UV_THREADPOOL_SIZE) return;
  const env = { ...process.env, UV_THREADPOOL_SIZE: String(THREAD_POOL_SIZE) };
  const argv = [process.execPath, ...process.execArgv, ...V8_FLAGS, ...process.argv.slice(1)];
  const code = execve(process.execPath, argv, env);
  throw new Error(`cannot re-execute ${process.execPath} with UV_THREADPOOL_SIZE set: ${code}`);
}
