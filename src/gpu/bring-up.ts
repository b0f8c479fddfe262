// Start-up of the GPUs, all in parallel: identify each GPU through NVML, then for each
// selected one read its persistence mode, enable it if wanted and off, and hold its node.
// One GPU's failure is recorded on that GPU and never stops the others.
import type { Nvml } from "../../native-bindings/nvml.js";
import { PERSISTENCE_ENABLED } from "../../native-bindings/nvml.js";
import { forEachLimited } from "../concurrency.js";
import { gpuLog, type Log } from "../log.js";
import { describeError } from "./describe-error.js";
import { deviceNodePath, holdDeviceNode } from "./device-node.js";
import type { GpuRecord } from "./gpu-record.js";
import { type GpuSelector, selectorMatches } from "./gpu-selector.js";
import type { PersistenceSetter } from "./persistence-setter.js";

export interface BringUpContext {
  nvml: Nvml;
  setter: PersistenceSetter;
  deviceDir: string;
  log: Log;
  /** GPUs brought up at once (1: one after another, as nvidia-persistenced does). */
  concurrency: number;
  /** Called once a GPU is settled (held or failed), for progress reports. */
  onSettled?: (gpu: GpuRecord) => void;
}

function emptyRecord(index: number): GpuRecord {
  return {
    index,
    uuid: "",
    name: "",
    pciBusId: "",
    minor: -1,
    handle: null,
    persistence: "unknown",
    selected: false,
    lost: false,
    xids: {},
    fd: null,
    nodePath: null,
    error: null,
  };
}

async function identify(nvml: Nvml, gpu: GpuRecord): Promise<void> {
  const handle = await nvml.handleByIndex(gpu.index);
  const [uuid, name, pci, minor] = await Promise.all([
    nvml.uuid(handle),
    nvml.name(handle),
    nvml.pciInfo(handle),
    nvml.minorNumber(handle),
  ]);
  Object.assign(gpu, { handle, uuid, name, pciBusId: pci.busId, minor });
}

/** Looks up every GPU NVML reports, in parallel; a GPU that cannot be identified keeps its error. */
export async function identifyGpus(nvml: Nvml, count: number, log: Log, concurrency: number): Promise<GpuRecord[]> {
  const gpus = Array.from({ length: count }, (_, i) => emptyRecord(i));
  await forEachLimited(gpus, concurrency, async (gpu) => {
    try {
      await identify(nvml, gpu);
      log.debug({ gpuIndex: gpu.index, gpuUuid: gpu.uuid, gpuPciBusId: gpu.pciBusId, name: gpu.name }, "found GPU");
    } catch (err) {
      gpu.error = `cannot identify GPU ${gpu.index}: ${describeError(err)}`;
      log.error({ gpuIndex: gpu.index, gpuUuid: "", gpuPciBusId: "" }, gpu.error);
    }
  });
  return gpus;
}

export interface Selection {
  selected: GpuRecord[];
  /** Selectors that matched no GPU, each with a message. */
  unmatched: string[];
}

/**
 * Marks the selected GPUs: all when no selector is given; otherwise those the selectors
 * name, in index order.
 */
export function selectGpus(gpus: GpuRecord[], selectors: GpuSelector[]): Selection {
  for (const gpu of gpus) gpu.selected = selectors.length === 0 || selectors.some((s) => selectorMatches(s, gpu));
  const unmatched = selectors
    .filter((s) => !gpus.some((g) => selectorMatches(s, g)))
    .map(
      (s) =>
        `--devices names '${s.text}', but no GPU has that ${s.kind === "index" ? "index" : s.kind === "uuid" ? "UUID" : "PCI bus id"} (${gpus.length} GPUs found)`,
    );
  return { selected: gpus.filter((g) => g.selected), unmatched };
}

/** Enables persistence if it reads off (never under --dry-run), then holds the node. */
export async function holdGpu(gpu: GpuRecord, ctx: BringUpContext): Promise<void> {
  const log = gpuLog(ctx.log, { gpuIndex: gpu.index, gpuUuid: gpu.uuid, gpuPciBusId: gpu.pciBusId });
  try {
    if (gpu.handle === null) throw new Error(gpu.error ?? "GPU was not identified");
    const mode = await ctx.nvml.persistenceMode(gpu.handle);
    if (mode === PERSISTENCE_ENABLED) {
      gpu.persistence = "enabled";
      log.info("already in requested persistence mode");
    } else {
      gpu.persistence = "disabled";
      const outcome = await ctx.setter.enable(ctx.nvml, gpu.handle);
      if (outcome === "enabled") {
        gpu.persistence = "enabled";
        log.info("persistence mode enabled");
      } else if (outcome === "closed") {
        // The hold below is what keeps the GPU initialised; NVML's setter would call us back.
        gpu.persistence = "enabled";
        log.info("persistence mode reads disabled; holding the GPU without NVML's setter (RPC socket up)");
      } else {
        log.info("dry run: persistence mode reads disabled; not calling the setter");
      }
    }
    gpu.fd = await holdDeviceNode(ctx.deviceDir, gpu.minor);
    gpu.nodePath = deviceNodePath(ctx.deviceDir, gpu.minor);
    gpu.error = null;
    log.info({ minor: gpu.minor }, "holding the GPU");
  } catch (err) {
    gpu.error = describeError(err);
    log.error(`cannot hold the GPU: ${gpu.error}`);
  }
  ctx.onSettled?.(gpu);
}

export async function holdGpus(gpus: GpuRecord[], ctx: BringUpContext): Promise<void> {
  await forEachLimited(gpus, ctx.concurrency, (gpu) => holdGpu(gpu, ctx));
}
