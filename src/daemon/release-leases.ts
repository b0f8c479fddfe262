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
  /** What each GPU had before the lease: its state and claims. */
  readonly before: Map<Gpu, { state: GpuState; claims: Claim[] }>;
}

/** A GPU named by the request is in another client's lease. */
export class LeasedElsewhere extends Error {}

export class ReleaseLeases {
  readonly #byGpu = new Map<Gpu, LeaseRecord>();

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
      before: new Map(gpus.map((g) => [g, { state: g.state, claims: [...g.claims] }])),
    };
    for (const gpu of gpus) this.#byGpu.set(gpu, record);
    return record;
  }

  /** A plain release of `claim` during the lease: the lease's end does not take it back. */
  forget(gpu: Gpu, claim: Claim): void {
    const before = this.#byGpu.get(gpu)?.before.get(gpu);
    if (!before) return;
    before.claims = before.claims.filter((c) => c !== claim);
    if (before.claims.length === 0 && before.state === "held") before.state = "released";
  }

  /** Ends the lease: takes back what each GPU had (a GPU that was released stays so). */
  async close(record: LeaseRecord, registry: GpuRegistry): Promise<void> {
    for (const gpu of record.gpus) this.#byGpu.delete(gpu);
    await Promise.all(
      record.gpus.map((gpu) => {
        const before = record.before.get(gpu);
        return registry.restore(gpu, before?.state === "released" ? null : (before?.claims ?? []));
      }),
    );
  }
}
