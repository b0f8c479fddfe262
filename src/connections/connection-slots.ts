// Connection slots per peer uid: one local user cannot take every connection. Each uid gets
// at most `perUid` at once, and the last `reserve` slots are kept for root and the daemon's
// own user, so `status`, a root nvidia-smi and the liveness probe still get through.

export interface SlotLimits {
  /** Connections open at once, all peers together. */
  total: number;
  /** Connections open at once from one unprivileged uid. */
  perUid: number;
  /** Of `total`, the slots only root and the daemon's own uid may take. */
  reserve: number;
}

export class ConnectionSlots {
  readonly limits: SlotLimits;
  readonly #byUid = new Map<number, number>();
  #total = 0;

  constructor(limits: SlotLimits) {
    this.limits = limits;
  }

  get open(): number {
    return this.#total;
  }

  /**
   * Takes a slot for a peer of `uid`. Returns the function that gives it back (call it once,
   * when the connection closes), or why the connection is refused.
   */
  take(uid: number): (() => void) | string {
    const privileged = uid === 0 || uid === process.geteuid?.();
    const mine = this.#byUid.get(uid) ?? 0;
    if (this.#total >= this.limits.total) return `all ${this.limits.total} connections are in use`;
    if (!privileged) {
      if (mine >= this.limits.perUid)
        return `uid ${uid} already has ${mine} connections open (at most ${this.limits.perUid})`;
      if (this.#total >= this.limits.total - this.limits.reserve) {
        return `the last ${this.limits.reserve} of ${this.limits.total} connections are kept for root`;
      }
    }
    this.#total++;
    this.#byUid.set(uid, mine + 1);
    let given = false;
    return () => {
      if (given) return;
      given = true;
      this.#total--;
      const left = (this.#byUid.get(uid) ?? 1) - 1;
      if (left > 0) this.#byUid.set(uid, left);
      else this.#byUid.delete(uid);
    };
  }
}
