// Releases that last as long as a client's control connection (`gpu-persistd release GPU...
// -- COMMAND`): which GPUs each lease has let go, what it takes back when it ends, and the
// rules that keep a lease consistent with everything else that may happen meanwhile. A GPU
// is in at most one lease; a plain release (RPC Set DISABLED) during a lease is kept when the
// lease ends; a hold (RPC Set ENABLED) during a lease is refused, since COMMAND may be
// resetting the GPU; a reload leaves leased GPUs alone.
import type { Claim, Gpu, GpuRegistry, GpuState } from "../gpu/gpu-registry.js";

export interface LeaseRecord {
  readonly pid: number;
  readonly since: Date;
  readonly gpus: readonly Gpu[];
  /** What each GPU had just before the lease released it (set as each release runs): its state and claims. */
  readonly before: Map<Gpu, { state: GpuState; claims: Claim[] }>;
  /** The lease's release, once it began: what a request during the lease waits for. */
  releasing?: Promise<void>;
}

/** A GPU named by the request is in another client's lease. */
export class LeasedElsewhere extends Error {}

export class ReleaseLeases {
  readonly #byGpu = new Map<Gpu, LeaseRecord>();
  /** Called when what a lease will take back changes (the fd store's record follows it). */
  onChange: () => void = () => {};

  /** The lease `gpu` is in, if any. */
  of(gpu: Gpu): LeaseRecord | undefined {
    return this.#byGpu.get(gpu);
  }

  /**
   * Opens a lease on `gpus` for client `pid`, at once (before anything awaits, so two
   * requests cannot both take a GPU); LeasedElsewhere naming the other lease otherwise.
   */
  open(gpus: readonly Gpu[], pid: number): LeaseRecord {
    for (const gpu of gpus) {
      const other = this.#byGpu.get(gpu);
      if (other) {
        throw new LeasedElsewhere(
          `GPU ${gpu.index} is already released by another 'gpu-persistd release' (pid ${other.pid}, since ${other.since.toISOString()}); it is held again when that one ends`,
        );
      }
    }
    const record: LeaseRecord = {
      pid,
      since: new Date(),
      gpus,
      before: new Map(),
    };
    for (const gpu of gpus) this.#byGpu.set(gpu, record);
    return record;
  }

  /** Releases the lease's GPUs, recording what each had. */
  release(record: LeaseRecord, registry: GpuRegistry): Promise<void> {
    record.releasing = this.#release(record, registry);
    return record.releasing;
  }

  async #release(record: LeaseRecord, registry: GpuRegistry): Promise<void> {
    await Promise.all(
      record.gpus.map(async (gpu) => {
        const before = await registry.release(gpu);
        // A plain release that came in while this one was queued is kept.
        const forgotten = record.before.get(gpu);
        record.before.set(gpu, forgotten ? { state: "released", claims: [] } : before);
      }),
    );
  }

  /** A plain release of `claim` during the lease: the lease's end does not take it back. */
  forget(gpu: Gpu, claim: Claim): void {
    const record = this.#byGpu.get(gpu);
    if (!record) return;
    const before = record.before.get(gpu);
    if (!before) {
      // Its release is still queued: record that nothing is to be taken back.
      record.before.set(gpu, { state: "released", claims: [] });
      this.onChange();
      return;
    }
    before.claims = before.claims.filter((c) => c !== claim);
    if (before.claims.length === 0 && before.state === "held") before.state = "released";
    this.onChange();
  }

  /** Ends the lease: takes back what each GPU had (a GPU that was released stays so). */
  async close(record: LeaseRecord, registry: GpuRegistry): Promise<void> {
    for (const gpu of record.gpus) this.#byGpu.delete(gpu);
    await Promise.all(
      record.gpus.map((gpu) => {
        const before = record.before.get(gpu);
        // Not released by this lease (still queued, or lost meanwhile): nothing to take back.
        if (!before) return Promise.resolve();
        return registry.restore(gpu, before.state === "released" ? null : before.claims);
      }),
    );
  }
}
