// At boot the daemon can start before the nvidia module has loaded (udev and module
// ordering): NVML then says DRIVER_NOT_LOADED. Wait for it with backoff, keeping systemd's
// start timeout ahead and saying what we wait for, then give up with the cause and the fix.
import type { Nvml } from "../../native-bindings/nvml.js";
import { NvmlError } from "../../native-bindings/nvml-errors.js";
import { NVML_ERROR_DRIVER_NOT_LOADED } from "../../native-bindings/nvml-return-codes.js";
import { ExitCode } from "../exit-codes.js";
import { FatalError } from "../fatal-error.js";
import { fixes } from "../fixes.js";
import type { Log } from "../log.js";
import type { SystemdNotifier } from "../systemd/notify.js";
import { describeError } from "./describe-error.js";

const FIRST_DELAY_MS = 250;
const MAX_DELAY_MS = 5000;

function driverMissing(err: unknown): boolean {
  return err instanceof NvmlError && err.code === NVML_ERROR_DRIVER_NOT_LOADED;
}

/**
 * nvmlInit, retried while the driver is not loaded, for at most `waitMs`. Other failures
 * are rethrown at once. Throws FatalError (exit 69) when the driver never loads. Resolves
 * how long the nvmlInit that succeeded took (ms): real NVML attaches every GPU there.
 */
export async function initWhenDriverLoads(
  nvml: Nvml,
  waitMs: number,
  log: Log,
  notifier: SystemdNotifier,
): Promise<number> {
  const started = performance.now();
  let delay = FIRST_DELAY_MS;
  for (let attempt = 1; ; attempt++) {
    const calledAt = performance.now();
    try {
      await nvml.init();
      if (attempt > 1) log.info(`the NVIDIA driver answered after ${Math.round(performance.now() - started)} ms`);
      return performance.now() - calledAt;
    } catch (err) {
      const waited = performance.now() - started;
      if (!driverMissing(err)) throw err;
      if (waited + delay > waitMs) {
        throw new FatalError(
          ExitCode.UNAVAILABLE,
          `the NVIDIA driver is not loaded (${describeError(err)}) and did not load within ${Math.round(waitMs / 1000)} s. ` +
            `To fix: ${fixes.loadDriver}; or give it longer with driverWaitMs (GPU_PERSISTD_DRIVER_WAIT_MS).`,
        );
      }
      const status = `waiting for the NVIDIA driver (NVML_ERROR_DRIVER_NOT_LOADED), ${Math.round(waited / 1000)} s of ${Math.round(waitMs / 1000)} s`;
      if (attempt === 1) log.warn(`${status}; retrying with backoff`);
      else log.debug(status);
      notifier.extendTimeout((delay + 10_000) * 1000, status);
      await new Promise((resolve) => setTimeout(resolve, delay));
      delay = Math.min(delay * 2, MAX_DELAY_MS);
    }
  }
}
