// `gpu-persistd wait [--timeout=SECONDS]`: blocks until the daemon is READY (every selected
// GPU settled). Exit 0 when every GPU the daemon wants held is held (its record says which),
// 1 when the daemon is ready but some are not or a selector matched no GPU (named) or it is degraded (NVML and the kernel module differ), 69 when no daemon answered ready within the timeout. Any user may run it,
// also in a container that shares the runtime directory.
import { requestStatus } from "../control/control-client.js";
import { ExitCode } from "../exit-codes.js";
import { FatalError } from "../fatal-error.js";
import { missingGpus } from "../status/health-verdict.js";

const POLL_MS = 100;

export async function waitCommand(runtimeDir: string, timeoutSeconds: number): Promise<void> {
  const deadline = performance.now() + timeoutSeconds * 1000;
  let last = "";
  for (;;) {
    try {
      const status = await requestStatus(runtimeDir, Math.max(100, deadline - performance.now()));
      if (status.ready) {
        if (status.nvmlDegraded) {
          throw new FatalError(ExitCode.FAILURE, `the daemon is ready but degraded: ${status.nvmlDegraded.message}`);
        }
        // Judged from the daemon's record alone: what it wants held, and the selectors it could not match.
        const notHeld = status.devices.filter((d) => d.wanted && !d.held);
        if (notHeld.length === 0 && status.unmatchedSelectors.length === 0) {
          const deliberate = status.persistenceMode ? "" : " (persistence mode off, as configured)";
          process.stdout.write(
            `gpu-persistd is ready: ${status.devices.filter((d) => d.held).length} GPUs held${deliberate}\n`,
          );
          return;
        }
        const names = [
          ...missingGpus(status),
          ...notHeld.map((d) => `GPU ${d.index} ${d.pciBusId} (${d.state}${d.error ? `: ${d.error}` : ""})`),
        ];
        throw new FatalError(ExitCode.FAILURE, `gpu-persistd is ready, but not every GPU is held: ${names.join("; ")}`);
      }
      last = "the daemon is still starting";
    } catch (err) {
      if (!(err instanceof FatalError) || err.exitCode !== ExitCode.UNAVAILABLE) throw err;
      last = err.message;
    }
    if (performance.now() + POLL_MS > deadline) {
      throw new FatalError(ExitCode.UNAVAILABLE, `no daemon ready within ${timeoutSeconds} s: ${last}`);
    }
    await new Promise((r) => setTimeout(r, POLL_MS));
  }
}
