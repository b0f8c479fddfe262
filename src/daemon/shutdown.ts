// SIGTERM/SIGINT/SIGUSR2, or a failed start: let go of every GPU at once, close every socket,
// write the last metrics, remove the runtime files, and exit, never waiting on a hung NVML
// call longer than stopTimeoutMs. A stop for good empties systemd's fd store too (stop-kind.ts).
import type { ExitCode } from "../exit-codes.js";
import { type StopKind, storeAtStop } from "../systemd/stop-kind.js";
import type { DaemonContext } from "./context.js";

export async function shutdown(ctx: DaemonContext, code: ExitCode, reason: string, kind: StopKind): Promise<never> {
  if (ctx.stopping) return new Promise<never>(() => {});
  ctx.stopping = true;
  const { log, notifier, runtime } = ctx.deps;
  notifier.stopping();
  log.info(ctx.fdStore.enabled ? `stopping: ${reason}; ${storeAtStop(kind)}` : `stopping: ${reason}`);
  ctx.health?.stop();
  ctx.leases.stop();
  // The Xid event set dies with the session: freeing it is one more call that could hang.
  ctx.xid = null;
  ctx.control?.close();
  ctx.rpc?.close();
  // First of all the GPUs: nothing below may delay their release.
  ctx.registry?.releaseAll();
  if (kind === "for-good") ctx.fdStore.dropAll();
  ctx.metricsListener?.close();
  ctx.metricsListener?.closeAllConnections();
  // The file then says what is true after the stop: no GPU held.
  ctx.metricsTextfile?.stop();
  for (const left of runtime.remove()) log.warn(`could not remove ${left}`);
  // nvmlShutdown beside a call still inside NVML (a health check) crashes real NVML: the
  // session ends only once they returned, else it is left to the kernel.
  const problem = (await ctx.session?.end(ctx.config.stopTimeoutMs)) ?? "";
  if (problem) log.warn(`exiting without a clean NVML shutdown: ${problem}`);
  log.info(`Shutdown (${process.pid})`);
  // _exit: process.exit() would wait for NVML calls still blocked on the thread pool.
  return ctx.deps.exit(code);
}
