// What watches the GPUs once they are held: the NVML session coordinator (the session follows
// the registry's state, the Xid set with it), the Xid event set (drained by the health
// rounds), and the health rounds themselves with systemd's watchdog pinged after each.
import { describeError } from "../gpu/describe-error.js";
import type { GpuRegistry } from "../gpu/gpu-registry.js";
import type { NvmlSession } from "../gpu/nvml-session.js";
import { SessionCoordinator } from "../gpu/session-coordinator.js";
import type { VersionMismatch } from "../gpu/version-mismatch.js";
import { HealthMonitor } from "../health/health-monitor.js";
import { XidEvents } from "../health/xid-events.js";
import { watchdogUsec } from "../systemd/notify.js";
import { Watchdog } from "../systemd/watchdog.js";
import type { DaemonContext } from "./context.js";
import { healthIntervalMs } from "./hold-policy.js";
import { describeMismatch } from "./nvml-start.js";

/** Registers the selected GPUs for Xid events; the health rounds drain the set. */
export async function startXidEvents(ctx: DaemonContext, session: NvmlSession, registry: GpuRegistry): Promise<void> {
  const xid = new XidEvents(session.nvml, registry, ctx.log);
  try {
    const watched = await xid.start(registry.list().filter((g) => g.selected && g.handle !== null));
    ctx.xid = xid;
    ctx.log.info(`watching Xid events on ${watched} GPUs`);
  } catch (err) {
    ctx.log.warn(`cannot watch Xid events: ${describeError(err)}`);
  }
}

/** Before the NVML session closes: the event set must not outlive it. */
export async function stopXidEvents(ctx: DaemonContext): Promise<void> {
  const xid = ctx.xid;
  ctx.xid = null;
  await xid?.stop();
}

export function startHealth(
  ctx: DaemonContext,
  session: NvmlSession,
  registry: GpuRegistry,
  coordinator: SessionCoordinator,
): void {
  const usec = watchdogUsec(ctx.deps.env);
  const watchdog =
    usec && ctx.deps.notifier.enabled
      ? new Watchdog(ctx.deps.notifier, usec, () => health.lastHealthyAt, ctx.log)
      : null;
  const health = new HealthMonitor(
    {
      nvml: session.nvml,
      registry,
      coordinator,
      telemetry: ctx.telemetry,
      nvmlOpen: () => session.open,
      xid: () => ctx.xid,
      onRound: (seconds, healthy, checked) => {
        ctx.metrics.observeHealthRound(seconds, healthy, checked);
        // The textfile follows the health timer: no timer, and no wake-up, of its own.
        ctx.metricsTextfile?.writeNow();
      },
      ...(watchdog ? { afterTick: () => watchdog.tick() } : {}),
      log: ctx.log,
    },
    healthIntervalMs(ctx.config.healthIntervalMs, watchdogUsec(ctx.deps.env)),
  );
  ctx.health = health;
  ctx.watchdog = watchdog;
  // The first ping at once: systemd's watchdog runs from READY on.
  watchdog?.tick();
  health.start();
  if (watchdog) {
    ctx.log.info(`watchdog: pinging every ${health.intervalMs} ms while every held GPU's health check answers`);
  }
}

/** The session coordinator, with what it stops before a close and starts after a reopen. */
export function followSession(
  ctx: DaemonContext,
  session: NvmlSession,
  registry: GpuRegistry,
  mismatch: VersionMismatch | null,
): SessionCoordinator {
  const coordinator = new SessionCoordinator(session, registry, ctx.log, () => describeMismatch(ctx, session));
  if (mismatch) coordinator.degraded(mismatch);
  ctx.coordinator = coordinator;
  coordinator.setWatchers({
    beforeClose: () => stopXidEvents(ctx),
    afterOpen: async () => {
      await registry.refreshHandles(session.nvml);
      await startXidEvents(ctx, session, registry);
    },
  });
  return coordinator;
}
