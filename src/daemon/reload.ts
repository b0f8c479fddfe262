// SIGHUP: read the configuration again and apply what can change while running. Which
// settings apply live is declared in the schema; each has its applier here (the compiler
// checks that none is missing). A SIGHUP before READY is remembered and applied once after
// it; a SIGHUP during a reload queues exactly one more.
import { type Config, type ConfigKey, type LiveKey, reloadPolicy } from "../config/schema.js";
import { fixes } from "../fixes.js";
import { watchdogUsec } from "../systemd/notify.js";
import type { DaemonContext } from "./context.js";
import { healthIntervalMs, unmatchedMessages, unmatchedSelectors, wanted } from "./hold-policy.js";
import { applySelection } from "./start-up.js";
import { daemonStatusLine } from "./status-snapshot.js";

/** Reloads run one at a time; requests that arrive meanwhile collapse into one more. */
export class ReloadQueue {
  readonly #run: () => Promise<void>;
  #ready = false;
  #requested = false;
  #running: Promise<void> | null = null;

  constructor(run: () => Promise<void>) {
    this.#run = run;
  }

  /** A SIGHUP: before ready, remembered; during a reload, one more is queued. */
  request(): void {
    this.#requested = true;
    if (this.#ready && !this.#running) this.#running = this.#drain();
  }

  /** Start-up is done: a reload asked for before now runs once. */
  ready(): void {
    this.#ready = true;
    if (this.#requested && !this.#running) this.#running = this.#drain();
  }

  /** Resolves once no reload runs or is queued (for tests and the stop). */
  settled(): Promise<void> {
    return this.#running ?? Promise.resolve();
  }

  async #drain(): Promise<void> {
    try {
      while (this.#requested) {
        this.#requested = false;
        await this.#run();
      }
    } finally {
      this.#running = null;
    }
  }
}

const APPLY: { [K in LiveKey]: (ctx: DaemonContext) => void | Promise<void> } = {
  logLevel: (ctx) => ctx.deps.setLogLevel(ctx.config.logLevel),
  nvmlTimeoutMs: (ctx) => {
    if (ctx.session) ctx.session.nvml.timeoutMs = ctx.config.nvmlTimeoutMs;
    if (ctx.kernel) ctx.kernel.timeoutMs = ctx.config.nvmlTimeoutMs;
  },
  releaseTimeoutMs: (ctx) => {
    if (ctx.session) ctx.session.idleLimitMs = ctx.config.releaseTimeoutMs;
  },
  // Read by the stop itself.
  stopTimeoutMs: () => {},
  healthIntervalMs: (ctx) => {
    ctx.health?.reschedule(healthIntervalMs(ctx.config.healthIntervalMs, watchdogUsec(ctx.deps.env)));
  },
  // These three decide which GPUs are held: applied together by holdWhatIsWanted.
  persistenceMode: () => {},
  devices: () => {},
  bringUpConcurrency: () => {},
  // Read by each `health-check` run, not by the daemon.
  healthCheckDrainReleased: () => {},
};

async function holdWhatIsWanted(ctx: DaemonContext): Promise<void> {
  const registry = ctx.registry;
  if (!registry) return;
  applySelection(ctx, registry);
  const keptReleased = registry.list().filter((g) => g.state === "released" && wanted(ctx.config, g));
  for (const gpu of keptReleased) {
    const lease = ctx.intents.of(gpu.index).lease;
    ctx.log.info(
      lease
        ? `GPU ${gpu.index} stays released while 'gpu-persistd release' (pid ${lease.pid}) runs; it is held when that ends`
        : `GPU ${gpu.index} stays released, as a client asked; hold it with: gpu-persistd hold ${gpu.index}`,
    );
  }
  await ctx.reconciler?.reconcileAll(ctx.config.bringUpConcurrency);
  // A GPU this reload selected reports its Xids from now on, not from the next reopen.
  const added = await ctx.xid?.watch(registry.list().filter((g) => g.selected));
  if (added) ctx.log.info(`watching Xid events on ${added} more GPUs`);
}

/** Keeps the running configuration: the journal and `status` (lastReload) say why, with the fix. */
function refuse(ctx: DaemonContext, why: string, verb: "failed" | "refused"): void {
  ctx.lastReload = { at: new Date(), refused: why };
  ctx.log.error(`reload ${verb}, keeping the running configuration: ${why}`);
  ctx.deps.notifier.ready(daemonStatusLine(ctx));
}

/** Why `next` cannot be applied whole, or null: every selector must name a GPU here, as at start-up. */
function refusal(ctx: DaemonContext, next: Config): string | null {
  const gpus = ctx.registry?.list() ?? [];
  const unmatched = unmatchedSelectors(next.devices, gpus);
  if (unmatched.length === 0) return null;
  return `${unmatchedMessages(unmatched, gpus.length).join("; ")}. To fix: ${fixes.checkDevices}, then reload again (systemctl reload gpu-persistd)`;
}

/** One reload, all or nothing: re-read, keep restart-only settings, apply every live change, report. */
export async function reload(ctx: DaemonContext): Promise<void> {
  if (ctx.stopping) return;
  const { notifier } = ctx.deps;
  notifier.reloading();
  ctx.log.info("reloading the configuration (SIGHUP)");
  let next: Config;
  try {
    next = ctx.deps.reloadConfig();
  } catch (err) {
    refuse(ctx, (err as Error).message, "failed");
    return;
  }
  const refused = refusal(ctx, next);
  if (refused !== null) {
    refuse(ctx, refused, "refused");
    return;
  }
  const previous = ctx.config;
  const changed = (Object.keys(next) as ConfigKey[]).filter(
    (key) => JSON.stringify(next[key]) !== JSON.stringify(previous[key]),
  );
  const merged: Record<string, unknown> = { ...next };
  for (const key of changed) {
    if (reloadPolicy(key) === "live") continue;
    merged[key] = previous[key];
    ctx.log.warn(`${key} changed: it takes effect when the daemon restarts (systemctl restart gpu-persistd)`);
  }
  ctx.config = merged as unknown as Config;
  const live = changed.filter((key): key is LiveKey => reloadPolicy(key) === "live");
  for (const key of live) await APPLY[key](ctx);
  if (live.length > 0) ctx.log.info(`applied: ${live.join(", ")}`);
  // Always: a GPU that failed before may be held now, even with an unchanged file.
  await holdWhatIsWanted(ctx);
  ctx.lastReload = { at: new Date(), refused: null };
  ctx.log.info(`reload done: ${daemonStatusLine(ctx)}`);
  if (!ctx.stopping) notifier.ready(daemonStatusLine(ctx));
}
