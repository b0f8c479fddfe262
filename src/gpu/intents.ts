// What is wanted of each GPU, and by whom: the intents. The configuration wants the selected
// GPUs held (persistenceMode); a client may release a GPU or hold it (RPC Set, `gpu-persistd
// release|hold`, by uid, until the opposite request), ask for its coherent memory online (RPC
// NUMA), or lease it (`release -- COMMAND`, released while that client process lives). The
// adapters only change intents; the reconciler (reconciler.ts) derives every GPU's effects
// from them with targetOf(). The book is kept in systemd's fd store (state-record.ts), so a
// restart, a crash or an upgrade resumes the same intents.
import type { Claim } from "./gpu-model.js";

/** Who asked, and since when; uid null when a version before intents recorded the release. */
export interface Owner {
  readonly uid: number | null;
  readonly since: Date;
}

/** A client's persistence choice: in force until a client asks the opposite. */
export interface ClientIntent extends Owner {
  readonly mode: "hold" | "release";
}

/** `release -- COMMAND`: the GPU stays released while the client process `pid` lives. */
export interface LeaseIntent {
  readonly pid: number;
  readonly since: Date;
}

export interface GpuIntents {
  readonly client: ClientIntent | null;
  /** A client asked for the GPU's coherent memory to be online (kept only for GPUs that have it). */
  readonly numa: Owner | null;
  readonly lease: LeaseIntent | null;
}

export const NO_INTENTS: GpuIntents = { client: null, numa: null, lease: null };

/** The configuration's wish for one GPU. */
export interface ConfigIntent {
  persistenceMode: boolean;
  selected: boolean;
}

/** Whether the configuration wants the GPU held: persistence on, and the GPU selected. */
export function configWants(config: ConfigIntent): boolean {
  return config.persistenceMode && config.selected;
}

/**
 * What the GPU's effects should be. `claims`: what keeps its node open (none: let go);
 * `idle`: what a GPU not held is then ("released": a client wants it free, so no NVML session
 * of ours may pin it); `forConfig`: held for the configuration (the legacy flag is read then).
 */
export interface Target {
  claims: Claim[];
  idle: "released" | "identified";
  forConfig: boolean;
}

/**
 * The target for a GPU's intents. A lease wins over everything (its command may be resetting
 * the GPU); a client's choice wins over the configuration; a NUMA request holds the node
 * whatever the persistence choice.
 */
export function targetOf(intents: GpuIntents, config: ConfigIntent): Target {
  const released = intents.lease !== null || intents.client?.mode === "release";
  const idle = released ? "released" : "identified";
  if (intents.lease) return { claims: [], idle, forConfig: false };
  const forConfig = intents.client === null && configWants(config);
  const claims: Claim[] = [];
  if (forConfig || intents.client?.mode === "hold") claims.push("persistence");
  if (intents.numa) claims.push("numa");
  return { claims, idle, forConfig };
}

/** Who a GPU is released for: its lease's client (root: only root may lease), or a client's plain release. */
export interface ReleasedBy {
  kind: "lease" | "request";
  uid: number | null;
  pid: number | null;
  since: Date;
}

/** A client's plain release outlives a lease it came in during: it is the one that names the GPU's owner. */
export function releasedBy(intents: GpuIntents): ReleasedBy | null {
  const { lease, client } = intents;
  if (client?.mode === "release") return { kind: "request", uid: client.uid, pid: null, since: client.since };
  if (lease) return { kind: "lease", uid: 0, pid: lease.pid, since: lease.since };
  return null;
}

/** One change of a GPU's intents, to take back: what it set, what was there, and its stamp. */
export interface IntentChange {
  readonly index: number;
  readonly patch: Partial<GpuIntents>;
  readonly before: GpuIntents;
  readonly stamp: number;
}

type Field = keyof GpuIntents;

/** Every GPU's intents, by GPU index. `onChange` follows each change (the state record does). */
export class IntentBook {
  readonly #byIndex = new Map<number, GpuIntents>();
  /** Per GPU, the stamp of the change that last set each field: a revert undoes only its own. */
  readonly #stamps = new Map<number, Partial<Record<Field, number>>>();
  #nextStamp = 1;
  onChange: () => void = () => {};

  of(index: number): GpuIntents {
    return this.#byIndex.get(index) ?? NO_INTENTS;
  }

  /** Replaces some of a GPU's intents; returns the change, to take it back. */
  change(index: number, patch: Partial<GpuIntents>): IntentChange {
    const before = this.of(index);
    const after = { ...before, ...patch };
    if (after.client === null && after.numa === null && after.lease === null) this.#byIndex.delete(index);
    else this.#byIndex.set(index, after);
    const stamp = this.#nextStamp++;
    const stamps = this.#stamps.get(index) ?? {};
    for (const field of Object.keys(patch) as Field[]) stamps[field] = stamp;
    this.#stamps.set(index, stamps);
    this.onChange();
    return { index, patch, before, stamp };
  }

  /**
   * Takes back `change` (only `fields`, when named): each field goes back to what it was only
   * while no later change has set it, so what another request changed since stands.
   */
  revert(change: IntentChange, fields: readonly Field[] = Object.keys(change.patch) as Field[]): void {
    const stamps = this.#stamps.get(change.index) ?? {};
    const back: Partial<Record<Field, unknown>> = {};
    for (const field of fields) if (stamps[field] === change.stamp) back[field] = change.before[field];
    if (Object.keys(back).length > 0) this.change(change.index, back as Partial<GpuIntents>);
  }

  /** The GPUs with any intent, by index. */
  entries(): [number, GpuIntents][] {
    return [...this.#byIndex];
  }
}
