// What the daemon knows about each GPU beyond its registry entry, for the one status record
// every reader judges from: whether the configuration wants it held, since when it is in its
// state, and who released it. Readers (wait, health-check, status) never re-derive these.
import { NvmlError } from "../../native-bindings/nvml-errors.js";
import { NVML_ERROR_DRIVER_NOT_LOADED, NVML_ERROR_NO_PERMISSION } from "../../native-bindings/nvml-return-codes.js";
import { fixes } from "../fixes.js";
import type { Gpu } from "../gpu/gpu-registry.js";
import { releasedBy } from "../gpu/intents.js";
import type { GpuFacts } from "../status/daemon-status.js";
import type { DaemonContext } from "./context.js";
import { wanted } from "./hold-policy.js";

/** Who a released GPU is released for, from its intents: a lease's client, or a plain release. */
function releasedByOf(ctx: DaemonContext, gpu: Gpu): GpuFacts["releasedBy"] {
  if (gpu.state !== "released") return null;
  const by = releasedBy(ctx.intents.of(gpu.index));
  return by && { kind: by.kind, uid: by.uid, pid: by.pid, since: by.since.toISOString() };
}

/** What an admin does about a GPU that is not as wanted; null when nothing is to be done. */
function fixFor(gpu: Gpu, releasedBy: GpuFacts["releasedBy"]): string | null {
  if (gpu.state === "lost") return fixes.lostGpu;
  if (releasedBy?.kind === "lease") return `it is held again when PID ${releasedBy.pid} ends`;
  if (releasedBy) return `hold it again with: gpu-persistd hold ${gpu.index}`;
  if (gpu.state !== "failed" && gpu.state !== "unidentified") return null;
  const code = gpu.fault instanceof NvmlError ? gpu.fault.code : null;
  if (code === NVML_ERROR_NO_PERMISSION) return fixes.runAsRoot;
  if (code === NVML_ERROR_DRIVER_NOT_LOADED) return fixes.loadDriver;
  // A node that cannot be opened names its own fix in the error; a reload tries every failed GPU again.
  return "see journalctl -u gpu-persistd; once the cause is mended: systemctl reload gpu-persistd";
}

export function gpuFacts(ctx: DaemonContext, gpu: Gpu): GpuFacts {
  const since = ctx.since.of(gpu);
  const by = releasedByOf(ctx, gpu);
  return {
    wanted: wanted(ctx.config, gpu),
    since: since ? since.toISOString() : null,
    releasedBy: by,
    fix: fixFor(gpu, by),
  };
}
