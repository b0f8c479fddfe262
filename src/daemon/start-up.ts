// Start-up, in order: NVML, the GPUs identified and selected, the sockets served, the
// selected GPUs held in parallel, the privilege drop, health and Xid watching, metrics, then
// READY=1, once, with every selected GPU settled. A stop requested meanwhile ends the sequence
// at the next step. The sockets come before the holds because real NVML sends every
// persistence call to the RPC socket whenever one is there (a socket unit's, before we run)
// and waits for the answer without a limit: nothing of ours may ask NVML about persistence
// before that socket is served (docs/architecture.md, "Start-up order").

import type { NvidiaKernel } from "../../native-bindings/nvidia-kernel.js";
import { NvmlError } from "../../native-bindings/nvml-errors.js";
import { NVML_ERROR_NO_PERMISSION } from "../../native-bindings/nvml-return-codes.js";
import { formatListenAddress } from "../config/listen-address.js";
import { startControlServer } from "../control/control-server.js";
import { ExitCode } from "../exit-codes.js";
import { FatalError } from "../fatal-error.js";
import { fixes } from "../fixes.js";
import { adoptHanded, keptState } from "../gpu/adoption.js";
import { describeError } from "../gpu/describe-error.js";
import { REAL_DEVICE_DIR } from "../gpu/device-node.js";
import { gpuFields } from "../gpu/gpu-log-fields.js";
import { GpuRegistry, type Identity } from "../gpu/gpu-registry.js";
import { DeviceEffects } from "../gpu/hold-effects.js";
import { identifyGpus } from "../gpu/identify.js";
import type { NvmlSession } from "../gpu/nvml-session.js";
import { Reconciler } from "../gpu/reconciler.js";
import type { SessionCoordinator } from "../gpu/session-coordinator.js";
import type { VersionMismatch } from "../gpu/version-mismatch.js";
import { startMetricsListener } from "../metrics/metrics-listener.js";
import { MetricsTextfile } from "../metrics/metrics-textfile.js";
import { dropPrivileges, resolveIdentity } from "../privileges.js";
import { RpcServer } from "../rpc/rpc-server.js";
import { parsePciAddress } from "../selection/pci-address.js";
import { createStandInNodes } from "../simulation.js";
import type { KeptState } from "../systemd/fd-store.js";
import { watchdogUsec } from "../systemd/notify.js";
import { VERSION } from "../version.js";
import type { DaemonContext } from "./context.js";
import { controlHandler } from "./control-adapter.js";
import { unmatchedMessages, unmatchedSelectors } from "./hold-policy.js";
import { recordInitialisation, startNvml } from "./nvml-start.js";
import { rpcBackend } from "./rpc-adapter.js";
import { keepStateRecord, resumeIntents } from "./state-record.js";
import { daemonStatusLine, metricsText } from "./status-snapshot.js";
import { followSession, startHealth, startXidEvents } from "./watching.js";

/** While bring-up runs, systemd's start timeout is pushed this far ahead, this often. */
const EXTEND_EVERY_MS = 5000;
const EXTEND_BY_USEC = 20_000_000;

/** As NVIDIA's daemon: UVM registration retried once a second for 30 s while the fabric is not ready. */
const UVM_RETRY_EVERY_MS = 1000;
const UVM_RETRY_FOR_MS = 30_000;

/** Thrown between steps once a stop was requested: the stop owns the process from there. */
export class StartAbandoned extends Error {}

function checkpoint(ctx: DaemonContext): void {
  if (ctx.stopping) throw new StartAbandoned("a stop was requested during start-up");
}

/** Marks the GPUs --devices names; logs each selector that matches none and returns the messages. */
export function applySelection(ctx: DaemonContext, registry: GpuRegistry): string[] {
  registry.select(ctx.config.devices);
  const messages = unmatchedMessages(unmatchedSelectors(ctx.config.devices, registry.list()), registry.list().length);
  for (const message of messages) ctx.log.error(message);
  return messages;
}

/** Keeps systemd's start timeout ahead of a slow bring-up; returns the stopper. */
function extendWhileSlow(ctx: DaemonContext, progress: () => string): () => void {
  const { notifier } = ctx.deps;
  if (!notifier.enabled) return () => {};
  const timer = setInterval(
    () => notifier.extendTimeout(EXTEND_BY_USEC, `bringing GPUs up: ${progress()}`),
    EXTEND_EVERY_MS,
  );
  timer.unref();
  return () => clearInterval(timer);
}

/** Who the GPUs are: NVML's answer, or without NVML what the last run recorded or the module lists. */
async function identities(
  ctx: DaemonContext,
  session: NvmlSession,
  kept: KeptState | null,
  mismatch: VersionMismatch | null,
  progress: Progress,
): Promise<(Identity | Error)[]> {
  if (mismatch) {
    const known = kept?.gpus.length ? kept.gpus : (ctx.kernel?.driverInfo().gpus ?? []);
    return known.flatMap((g) => {
      const pci = parsePciAddress(g.busId);
      return pci ? [{ handle: null, uuid: g.uuid, name: g.name, minor: g.minor, pci }] : [];
    });
  }
  const count = await session.nvml.deviceCount().catch((err: unknown) => {
    throw new FatalError(ExitCode.UNAVAILABLE, `cannot count GPUs: ${describeError(err)}`);
  });
  if (count === 0) throw new FatalError(ExitCode.UNAVAILABLE, `NVML reports no GPUs: ${fixes.noGpus}.`);
  // systemd's STATUS counts them while they are identified.
  progress.total = count;
  return identifyGpus(session.nvml, count, ctx.config.bringUpConcurrency);
}

/** How far bring-up is, for systemd's STATUS while it runs. */
interface Progress {
  settled: number;
  total: number;
}

/** The GPUs identified and selected, and what holds them; nothing held yet. */
interface Identified {
  registry: GpuRegistry;
  effects: DeviceEffects;
  unmatched: string[];
}

/** Identifies and selects the GPUs: no NVML call here reaches the persistence socket. */
async function identify(
  ctx: DaemonContext,
  session: NvmlSession,
  mismatch: VersionMismatch | null,
  progress: Progress,
): Promise<Identified> {
  const { config, log } = ctx;
  const { runtime } = ctx.deps;
  const simulated = config.simulate !== "";
  const kernel = ctx.kernel as NvidiaKernel;
  const kept = keptState(ctx.passedFds, ctx.fdStore, log);
  const found = await identities(ctx, session, kept, mismatch, progress);
  progress.total = found.length;
  const deviceDir = simulated ? runtime.simDeviceDir : REAL_DEVICE_DIR;
  if (simulated) {
    // Under systemd the stand-ins outlive the daemon, as /dev/nvidiaN does: what the fd store
    // keeps across a restart must still be the node the next run finds.
    if (!ctx.fdStore.enabled) runtime.track(deviceDir);
    createStandInNodes(
      deviceDir,
      found.flatMap((id) => (id instanceof Error ? [] : [id.minor])),
    );
  }
  const handed = adoptHanded(ctx.passedFds, found, {
    deviceDir,
    simulated,
    store: ctx.fdStore,
    log,
    socketPaths: [runtime.controlSocket, runtime.rpcSocket],
  });
  const effects = new DeviceEffects({
    nvml: session.nvml,
    kernel,
    deviceDir,
    uvmRetryEveryMs: ctx.deps.uvmRetry?.everyMs ?? UVM_RETRY_EVERY_MS,
    uvmRetryForMs: ctx.deps.uvmRetry?.forMs ?? UVM_RETRY_FOR_MS,
    store: ctx.fdStore,
    handed,
  });
  const registry = new GpuRegistry(found, {
    effects,
    uvmPersistence: config.uvmPersistenceMode,
    nvmlOpen: () => session.open,
  });
  ctx.registry = registry;
  ctx.reconciler = new Reconciler(registry, ctx.intents, () => ctx.config.persistenceMode);
  ctx.handedSockets = handed.sockets;
  recordInitialisation(ctx, session, found);
  ctx.telemetry.follow(registry, session.nvml, () => session.open);
  if (handed.nodes.size > 0) {
    log.info(`adopting ${handed.nodes.size} GPU nodes the previous run kept in systemd's fd store: no GPU was let go`);
  }
  for (const gpu of registry.list()) {
    if (gpu.state === "unidentified")
      log.error(gpuFields(gpu), `cannot identify GPU ${gpu.index}: ${describeError(gpu.fault)}`);
    else log.debug({ ...gpuFields(gpu), name: gpu.name }, "found GPU");
  }
  ctx.since.follow(registry);
  registry.on("transition", (t) => ctx.log[t.level](gpuFields(t.gpu), t.message));
  registry.on("note", (t) => ctx.log[t.level](gpuFields(t.gpu), t.message));
  // After READY, systemd's STATUS follows every change; before it, the progress line does.
  registry.on("transition", () => {
    if (ctx.ready && !ctx.stopping) ctx.deps.notifier.status(daemonStatusLine(ctx));
  });
  const unmatched = applySelection(ctx, registry);
  // What clients wanted before the restart (a release, a hold, a lease whose client runs) stands.
  keepStateRecord(ctx, registry, resumeIntents(ctx, kept, registry, handed.leases));
  return { registry, effects, unmatched };
}

/** Holds the selected GPUs (their nodes first); throws FatalError when none can be held. */
async function holdSelected(
  ctx: DaemonContext,
  { registry, effects, unmatched }: Identified,
  mismatch: VersionMismatch | null,
  progress: Progress,
): Promise<void> {
  const { config, log } = ctx;
  // What the previous run kept for a GPU that is not held now is let go.
  const discard = () => effects.discardUnused(registry.list(), (message) => log.info(message));
  const reconciler = ctx.reconciler as Reconciler;
  if (!config.persistenceMode) {
    log.info("starting with no GPU held for the configuration (--no-persistence-mode)");
    // A client's hold or release from before the restart still stands.
    await reconciler.reconcileAll(config.bringUpConcurrency);
    await discard();
    return;
  }
  const selected = registry.list().filter((g) => g.selected);
  if (selected.length === 0 && mismatch) {
    log.error("no GPU can be held without NVML: none was kept across the restart, and the module lists none here");
    await reconciler.reconcileAll(config.bringUpConcurrency);
    await discard();
    return;
  }
  if (selected.length === 0) {
    throw new FatalError(
      ExitCode.CONFIG,
      `no GPU is selected: ${unmatched.join("; ")}. To fix: ${fixes.checkDevices}.`,
    );
  }
  progress.total = selected.length;
  const onTransition = (t: { gpu: { selected: boolean }; to: string }): void => {
    if (t.gpu.selected && ["held", "failed", "released"].includes(t.to)) progress.settled++;
  };
  registry.on("transition", onTransition);
  try {
    await reconciler.reconcileAll(config.bringUpConcurrency);
  } finally {
    registry.off("transition", onTransition);
  }
  await discard();
  checkpoint(ctx);
  // A GPU a client released (a lease whose command still runs, say) is as wanted.
  const toHold = selected.filter((g) => g.state !== "released");
  if (toHold.length === 0) {
    log.info("every selected GPU stays released, as clients asked");
    return;
  }
  if (toHold.some((g) => g.state === "held") || mismatch) return;
  const first = toHold.find((g) => g.fault !== null);
  throw new FatalError(
    toHold.every((g) => g.fault instanceof NvmlError && g.fault.code === NVML_ERROR_NO_PERMISSION)
      ? ExitCode.NO_PERMISSION
      : ExitCode.FAILURE,
    `no selected GPU could be held (first failure: GPU ${first?.index} ${first ? gpuFields(first).gpuPciBusId : ""}: ${describeError(first?.fault)})`,
  );
}

async function openSockets(ctx: DaemonContext): Promise<void> {
  const { config, log } = ctx;
  const { runtime } = ctx.deps;
  const handed = (path: string): number | undefined => ctx.handedSockets.get(path);
  ctx.control = await startControlServer(runtime.controlSocket, controlHandler(ctx), log, {
    handedFd: handed(runtime.controlSocket),
  });
  const rpcFd = handed(runtime.rpcSocket);
  ctx.rpc = await RpcServer.listen(runtime.rpcSocket, rpcBackend(ctx), log, undefined, rpcFd);
  log.info(
    `serving the persistence RPC protocol on ${runtime.rpcSocket}${rpcFd === undefined ? "" : " (the socket unit's: it outlives this process)"}`,
  );
  if (config.metricsListen) {
    // Before the drop: a port below 1024 needs root to bind, not to serve.
    ctx.metricsListener = await startMetricsListener(config.metricsListen, () => metricsText(ctx));
    log.info(`serving metrics on http://${formatListenAddress(config.metricsListen)}/metrics`);
  }
}

/** Brings the daemon up; throws FatalError (or StartAbandoned) when it cannot. */
export async function startUp(ctx: DaemonContext): Promise<void> {
  const { config } = ctx;
  const { log, runtime, notifier } = ctx.deps;
  log.info({ version: VERSION, runtimeDir: runtime.dir, dryRun: config.dryRun }, `Started (${process.pid})`);
  if (config.nvidiaCfgPath) {
    log.info(`--nvidia-cfg-path ${config.nvidiaCfgPath} accepted and ignored: GPUs are found through NVML`);
  }
  // Before any GPU is touched: an unknown user must not leave GPUs half set up.
  const identity = resolveIdentity(config.user, config.group);
  // A malformed WATCHDOG_USEC is refused before any GPU is touched.
  watchdogUsec(ctx.deps.env);
  const started = performance.now();

  const progress: Progress = { settled: 0, total: 0 };
  const stopExtending = extendWhileSlow(ctx, () => `${progress.settled}/${progress.total} settled`);
  let session: NvmlSession;
  let mismatch: VersionMismatch | null;
  let registry: GpuRegistry;
  let coordinator: SessionCoordinator;
  try {
    ({ session, mismatch } = await startNvml(ctx));
    checkpoint(ctx);
    const identified = await identify(ctx, session, mismatch, progress);
    registry = identified.registry;
    // The session follows the registry's state from here: a GPU that stays released from the
    // last run (a lease whose command may be resetting it) is let go of by NVML as soon as
    // it is reconciled, not after every other GPU's hold.
    coordinator = followSession(ctx, session, registry, mismatch);
    checkpoint(ctx);
    // Served before any persistence call of ours: NVML would send it to this socket.
    await openSockets(ctx);
    checkpoint(ctx);
    await holdSelected(ctx, identified, mismatch, progress);
  } finally {
    stopExtending();
  }
  // With the session open (nothing released): the Xid set; else the reopen registers it.
  if (!mismatch && session.open) await startXidEvents(ctx, session, registry);
  await coordinator.settle();
  // A lease resumed from the last run ends when its client does.
  ctx.leases.watchOrphans({ reconciler: ctx.reconciler as Reconciler, coordinator });
  ctx.broughtUp.resolve();
  checkpoint(ctx);
  if (identity) {
    // The runtime directory stays root's: the dropped user could otherwise plant links there
    // for root's next start. What it cannot remove at exit, the next start takes over.
    dropPrivileges(identity);
    runtime.privilegesDropped();
    log.info(`now running as ${identity.description}`);
  }
  startHealth(ctx, session, registry, coordinator);
  checkpoint(ctx);
  const bringUpMs = performance.now() - started;
  ctx.metrics.recordBringUp(bringUpMs / 1000);
  if (config.metricsTextfile) {
    // After the drop: the first write proves the daemon's final user may write there.
    ctx.metricsTextfile = new MetricsTextfile(
      config.metricsTextfile,
      () => metricsText(ctx),
      log,
      config.user || "root",
    );
    ctx.metricsTextfile.open();
    log.info(`writing metrics to ${config.metricsTextfile} after every health round (${ctx.health?.intervalMs} ms)`);
  }
  const selected = registry.list().filter((g) => g.selected).length;
  const held = registry.list().filter((g) => g.state === "held").length;
  log.info({ held, selected, bringUpMs: Math.round(bringUpMs) }, `ready: ${held}/${selected} GPUs held`);
  ctx.ready = true;
  notifier.ready(daemonStatusLine(ctx));
}
