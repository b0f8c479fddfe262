// What the daemon reports about itself: the status reply, the STATUS= line and the
// Prometheus text, all from one snapshot of the registry.

import type { Gpu } from "../gpu/gpu-registry.js";
import { mismatchText } from "../gpu/version-mismatch.js";
import { type DaemonStatus, type GpuStatus, gpuStatus, STATUS_FORMAT } from "../status/daemon-status.js";
import { statusLine } from "../status/status-line.js";
import { VERSION } from "../version.js";
import type { DaemonContext } from "./context.js";
import { gpuFacts } from "./gpu-facts.js";
import { unmatchedSelectors } from "./hold-policy.js";

function degraded(ctx: DaemonContext): DaemonStatus["nvmlDegraded"] {
  const m = ctx.coordinator?.mismatch;
  return m ? { ...m, message: mismatchText(m) } : null;
}

/** One GPU's status: the registry's, what the daemon knows of it beyond, and what the health rounds read. */
export function gpuStatusOf(ctx: DaemonContext, gpu: Gpu): GpuStatus {
  return gpuStatus(gpu, gpuFacts(ctx, gpu), ctx.telemetry.of(gpu.index));
}

function devices(ctx: DaemonContext): GpuStatus[] {
  return (ctx.registry?.list() ?? []).map((gpu) => gpuStatusOf(ctx, gpu));
}

export function daemonStatus(ctx: DaemonContext): DaemonStatus {
  const { rss, heapUsed, external } = process.memoryUsage();
  return {
    format: STATUS_FORMAT,
    pid: process.pid,
    version: VERSION,
    simulated: ctx.config.simulate !== "",
    dryRun: ctx.config.dryRun,
    uid: process.getuid?.() ?? -1,
    ready: ctx.ready,
    nvmlSession: ctx.session?.open ?? false,
    nvmlDegraded: degraded(ctx),
    rpcRequests: ctx.rpc?.requests ?? 0,
    persistenceMode: ctx.config.persistenceMode,
    // Before the GPUs are known, nothing can be said to be missing.
    unmatchedSelectors: ctx.registry
      ? unmatchedSelectors(ctx.config.devices, ctx.registry.list()).map((s) => s.text)
      : [],
    lastReload: ctx.lastReload ? { at: ctx.lastReload.at.toISOString(), refused: ctx.lastReload.refused } : null,
    memory: { rss, heapUsed, external },
    devices: devices(ctx),
  };
}

export function daemonStatusLine(ctx: DaemonContext): string {
  const line = statusLine(devices(ctx), ctx.config.persistenceMode);
  const m = ctx.coordinator?.mismatch;
  return m
    ? `degraded: NVML ${m.libraryVersion ?? "?"} vs kernel module ${m.moduleVersion ?? "?"}, reboot to fix; ${line}`
    : line;
}

export function metricsText(ctx: DaemonContext): string {
  return ctx.metrics.render({
    version: VERSION,
    devices: devices(ctx),
    rpcRequests: ctx.rpc?.requestCounts ?? new Map(),
    nvmlDegraded: degraded(ctx),
  });
}
