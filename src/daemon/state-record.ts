// The state record in systemd's fd store: every GPU's intents, written at each change, and
// read back at the next start so that a restart, a crash or an upgrade resumes them. A lease
// is resumed only while its client process still runs (release-leases.ts).
import { describeError } from "../gpu/describe-error.js";
import type { GpuRegistry } from "../gpu/gpu-registry.js";
import type { GpuIntents } from "../gpu/intents.js";
import { formatPciAddress, parsePciAddress, samePciDevice } from "../selection/pci-address.js";
import type { KeptIntents, KeptState } from "../systemd/fd-store.js";
import type { DaemonContext } from "./context.js";

function toKept(busId: string, i: GpuIntents): KeptIntents {
  const kept: KeptIntents = { busId };
  if (i.client) kept.client = { mode: i.client.mode, uid: i.client.uid, since: i.client.since.toISOString() };
  if (i.numa) kept.numa = { uid: i.numa.uid, since: i.numa.since.toISOString() };
  if (i.lease) kept.lease = { pid: i.lease.pid, since: i.lease.since.toISOString() };
  return kept;
}

function fromKept(k: KeptIntents): GpuIntents {
  return {
    client: k.client ? { mode: k.client.mode, uid: k.client.uid, since: new Date(k.client.since) } : null,
    numa: k.numa ? { uid: k.numa.uid, since: new Date(k.numa.since) } : null,
    lease: k.lease ? { pid: k.lease.pid, since: new Date(k.lease.since) } : null,
  };
}

/**
 * Takes up the intents the previous run recorded, leases only where the client still runs
 * (`handedLeases`: the pidfds systemd handed back, by PID; those no lease names are closed).
 * A record from a version before intents lists released GPUs only: each is a client's
 * release of unknown uid, since the restart. Returns the intents of GPUs not found now.
 */
export function resumeIntents(
  ctx: DaemonContext,
  kept: KeptState | null,
  registry: GpuRegistry,
  handedLeases: ReadonlyMap<number, number>,
): KeptIntents[] {
  const since = new Date().toISOString();
  const recorded: KeptIntents[] =
    kept?.intents ?? (kept?.released ?? []).map((busId) => ({ busId, client: { mode: "release", uid: null, since } }));
  const alive = new Map<number, boolean>();
  const unseen: KeptIntents[] = [];
  for (const entry of recorded) {
    const address = parsePciAddress(entry.busId);
    const gpu = address && registry.list().find((g) => g.pci && samePciDevice(g.pci, address));
    if (!gpu) {
      // Not identified this time (an NVML fault, say): a client's wish waits for it. A lease
      // cannot: nobody watches its client meanwhile.
      const { lease: _, ...rest } = entry;
      if (rest.client || rest.numa) unseen.push(rest);
      continue;
    }
    let intents = fromKept(entry);
    const pid = intents.lease?.pid;
    if (pid !== undefined) {
      if (!alive.has(pid)) alive.set(pid, ctx.leases.resume(pid, handedLeases.get(pid)));
      if (!alive.get(pid)) intents = { ...intents, lease: null };
    }
    ctx.intents.change(gpu.index, intents);
  }
  ctx.leases.discardUnused(handedLeases, new Set(alive.keys()));
  return unseen;
}

/**
 * Under systemd, keeps the record in step with the intents from now on (written once now),
 * with the `unseen` GPUs' intents carried forward. A record that cannot be written is logged;
 * nothing else depends on it.
 */
export function keepStateRecord(ctx: DaemonContext, registry: GpuRegistry, unseen: readonly KeptIntents[]): void {
  const store = ctx.fdStore;
  if (!store.enabled) return;
  const record = (): void => {
    if (ctx.stopping) return;
    const intents: KeptIntents[] = [...unseen];
    const released = unseen.flatMap((i) => (i.client?.mode === "release" ? [i.busId] : []));
    for (const [index, i] of ctx.intents.entries()) {
      const pci = registry.list()[index]?.pci;
      if (!pci) continue;
      intents.push(toKept(formatPciAddress(pci), i));
      if (i.client?.mode === "release") released.push(formatPciAddress(pci));
    }
    const gpus = registry
      .list()
      .flatMap((g) => (g.pci ? [{ busId: formatPciAddress(g.pci), minor: g.minor, uuid: g.uuid, name: g.name }] : []));
    try {
      store.keepState({ released, gpus, intents });
    } catch (err) {
      ctx.log.warn(`cannot record the GPUs' intents in systemd's fd store: ${describeError(err)}`);
    }
  };
  record();
  ctx.intents.onChange = record;
}
