// NVML at start-up: the library loaded and initialised (or the version mismatch that keeps it
// closed, described for every channel), and what each GPU's first attach cost.
import { NvidiaKernel } from "../../native-bindings/nvidia-kernel.js";
import { describeError } from "../gpu/describe-error.js";
import type { Identity } from "../gpu/gpu-model.js";
import { NvmlSession } from "../gpu/nvml-session.js";
import { isVersionMismatch, mismatchText, type VersionMismatch } from "../gpu/version-mismatch.js";
import { nvmlLibraryFor } from "../simulation.js";
import type { DaemonContext } from "./context.js";

/** Loads NVML and starts it; resolves the session, open, or closed with the version mismatch that keeps it so. */
export async function startNvml(
  ctx: DaemonContext,
): Promise<{ session: NvmlSession; mismatch: VersionMismatch | null }> {
  const { config, log } = ctx;
  const path = nvmlLibraryFor(config, ctx.deps.env);
  if (config.simulate !== "") {
    log.info({ library: path }, `simulating GPUs (${config.simulate === "on" ? "as configured" : config.simulate})`);
  }
  const session = NvmlSession.load(path, config.nvmlTimeoutMs, log, config.releaseTimeoutMs);
  ctx.session = session;
  ctx.kernel =
    config.simulate !== ""
      ? NvidiaKernel.simulated(path, config.nvmlTimeoutMs)
      : NvidiaKernel.real(config.nvmlTimeoutMs);
  try {
    await session.start(config.driverWaitMs, ctx.deps.notifier);
  } catch (err) {
    if (!isVersionMismatch(err)) throw err;
    const mismatch = await describeMismatch(ctx, session);
    // No restart can mend it: degrade, keep what is held, and say so on every channel.
    log.error(`cannot initialise NVML: ${mismatchText(mismatch)}`);
    return { session, mismatch };
  }
  log.info({ driver: await session.nvml.driverVersion().catch(describeError) }, "NVML initialised");
  return { session, mismatch: null };
}

export function describeMismatch(ctx: DaemonContext, session: NvmlSession): Promise<VersionMismatch> {
  return session.nvml
    .libraryVersion()
    .then((libraryVersion) => ({ libraryVersion, moduleVersion: ctx.kernel?.driverInfo().moduleVersion ?? null }));
}

/**
 * What the daemon paid to initialise each GPU at its first attach. Real NVML attaches every
 * GPU inside nvmlInit (a cold GPU costs seconds there, and NVML tells no split per GPU, so
 * each GPU's figure includes the whole nvmlInit: what the next client would have waited); a
 * driver that attaches lazily, as the simulator does (attachDelayMs), pays it at the GPU's
 * first handle look-up. Opening the node afterwards costs nothing: NVML attached it already.
 */
export function recordInitialisation(
  ctx: DaemonContext,
  session: NvmlSession,
  found: readonly (Identity | Error)[],
): void {
  if (session.firstInitMs === null) return;
  for (const [index, id] of found.entries()) {
    if (!(id instanceof Error) && id.lookUpMs !== undefined) {
      ctx.telemetry.recordAttach(index, (session.firstInitMs + id.lookUpMs) / 1000);
    }
  }
}
