// When a call on libuv's thread pool starts running, inferred from outside. koffi's fn.async
// queues the call (uv_queue_work) and reports only its end; nothing runs on the pool thread
// before the call that could tell the loop it began. But libuv's pool takes queued work first
// in, first out on a fixed number of threads (UV_THREADPOOL_SIZE, read once at start), and a
// call blocked in the driver keeps its thread. So while fewer of our calls are running than the
// pool has threads, a new call starts at once; otherwise it starts when one of the running ones
// returns, the oldest waiting first. A time limit armed at that moment measures the call's own
// time, not the queue's: bring-up queues several calls per GPU on a pool of one thread per GPU.
//
// Work that is not ours (Node's fs, crypto, DNS) shares the pool and is not seen here; it can
// only make a call start later than inferred, by the length of such work (milliseconds, never
// a time limit's seconds), and a call may start slightly earlier than inferred (its thread
// freed before the loop ran the previous call's callback): both only shift a limit a little.

/** libuv's pool size: UV_THREADPOOL_SIZE as libuv reads it (atoi, at least 1, at most 1024), else 4. */
export function poolSize(env: NodeJS.ProcessEnv): number {
  const text = env.UV_THREADPOOL_SIZE;
  if (!text) return 4;
  const n = Number.parseInt(text, 10);
  return Math.min(1024, Math.max(1, Number.isNaN(n) ? 0 : n));
}

/** One call on the pool, as this module sees it. */
export interface PoolCall {
  /** Call once, from the call's completion callback. */
  returned(): void;
}

export class PoolOccupancy {
  readonly size: number;
  #running = 0;
  /** Start callbacks of calls queued behind the running ones, oldest first. */
  readonly #waiting: (() => void)[] = [];

  constructor(size: number) {
    this.size = size;
  }

  /** A call queued now; `started` runs when it is presumed running (maybe at once). */
  queued(started: () => void): PoolCall {
    let state: "waiting" | "running" | "returned" = "waiting";
    const start = (): void => {
      state = "running";
      started();
    };
    if (this.#running < this.size) {
      this.#running++;
      start();
    } else {
      this.#waiting.push(start);
    }
    return {
      returned: () => {
        if (state === "returned") return;
        if (state === "waiting") {
          // It ran on a thread not counted here (the pool was larger or freer than inferred).
          this.#waiting.splice(this.#waiting.indexOf(start), 1);
          state = "returned";
          return;
        }
        state = "returned";
        const next = this.#waiting.shift();
        if (next) next();
        else this.#running--;
      },
    };
  }
}

/** The process's one pool: every binding that queues calls on it shares this. */
export const libuvPool = new PoolOccupancy(poolSize(process.env));

/** A call on the pool that did not return within its time limit; its thread stays blocked until it does. */
export class PoolCallTimeoutError extends Error {
  readonly call: string;
  readonly timeoutMs: number;
  /** Resolves when the call finally returns and frees its pool thread (maybe never). */
  readonly returned: Promise<void>;
  constructor(call: string, timeoutMs: number, returned: Promise<void>) {
    super(`${call} did not return within ${timeoutMs} ms (driver hung?)`);
    this.call = call;
    this.timeoutMs = timeoutMs;
    this.returned = returned;
  }
}

/**
 * One koffi async call (`start` queues it and hands koffi `done` as its callback), with a time
 * limit counted from when it is presumed running. Resolves what `settle` makes of the call's
 * result (it may throw, say for an error code), or rejects with `timedOut(returned)` when the
 * limit passes first; `afterReturn` runs whenever the call returns, in time or not.
 */
export function timedPoolCall<R, T>(
  timeoutMs: number,
  start: (done: (err: Error | null, result: R) => void) => void,
  settle: (result: R) => T,
  timedOut: (returned: Promise<void>) => PoolCallTimeoutError,
  afterReturn: () => void = () => {},
): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    let settled = false;
    let returned: () => void = () => {};
    let timer: NodeJS.Timeout | undefined;
    const call = libuvPool.queued(() => {
      timer = setTimeout(() => {
        settled = true;
        reject(timedOut(new Promise<void>((r) => (returned = r))));
      }, timeoutMs);
    });
    start((err, result) => {
      call.returned();
      afterReturn();
      if (settled) {
        returned();
        return;
      }
      settled = true;
      clearTimeout(timer);
      if (err) reject(err);
      else {
        try {
          resolve(settle(result));
        } catch (e) {
          reject(e);
        }
      }
    });
  });
}
