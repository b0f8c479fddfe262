// sd_notify(3), in-process: datagrams from the main PID itself (a child such as the
// systemd-notify binary is rejected under NotifyAccess=main, also after a privilege drop).
import { DatagramError, UnixDatagramSender, unixAddress } from "../../native-bindings/unix-datagram.js";
import { ExitCode } from "../exit-codes.js";
import { FatalError } from "../fatal-error.js";

/**
 * How long a message waits for room in PID 1's notify queue. The queue holds
 * net.unix.max_dgram_qlen datagrams (systemd raises it to 512 at boot; 10 where it cannot, as
 * in a container sharing the host's network namespace): a burst of FDSTORE messages fills it,
 * and a READY=1 dropped then fails the start (seen under systemd-nspawn). libsystemd's own
 * sd_notify blocks for room; this waits as long, bounded.
 */
const QUEUE_FULL_PATIENCE_MS = 2000;
const QUEUE_FULL_RETRY_MS = 2;
const pause = new Int32Array(new SharedArrayBuffer(4));

export class SystemdNotifier {
  /** A wait for room ran out: until a send gets through, the next ones do not wait (the stall stays bounded). */
  #stalled = false;
  readonly #sender: UnixDatagramSender | null;
  readonly #address: Buffer | null;
  readonly #onError: (err: Error) => void;

  /**
   * From NOTIFY_SOCKET (a path or `@abstract`). Unset: every method is a silent no-op, as
   * for a daemon started outside systemd. Malformed: throws DatagramError naming it.
   */
  constructor(env: NodeJS.ProcessEnv, onError: (err: Error) => void) {
    this.#onError = onError;
    const socket = env.NOTIFY_SOCKET;
    if (!socket) {
      this.#sender = null;
      this.#address = null;
      return;
    }
    this.#address = unixAddress(socket);
    this.#sender = new UnixDatagramSender();
  }

  get enabled(): boolean {
    return this.#sender !== null;
  }

  /**
   * Sends `KEY=value` lines in one datagram. Returns true when sent, false when there is no
   * NOTIFY_SOCKET; a failed send is reported through onError (systemd gone, say) and
   * returns false.
   */
  send(fields: Record<string, string | number>, fds: readonly number[] = []): boolean {
    if (!this.#sender || !this.#address) return false;
    const text = Object.entries(fields)
      .map(([k, v]) => `${k}=${String(v).replaceAll("\n", " ")}`)
      .join("\n");
    const payload = Buffer.from(`${text}\n`, "utf8");
    const started = performance.now();
    for (;;) {
      try {
        if (fds.length) this.#sender.sendWithFds(this.#address, payload, fds);
        else this.#sender.send(this.#address, payload);
        this.#stalled = false;
        return true;
      } catch (err) {
        const full = err instanceof DatagramError && err.code === "EAGAIN";
        if (!full || this.#stalled || performance.now() - started > QUEUE_FULL_PATIENCE_MS) {
          this.#stalled ||= full;
          this.#onError(err instanceof DatagramError ? err : new Error(String(err)));
          return false;
        }
        // PID 1 reads its queue between other work: a few milliseconds free room.
        Atomics.wait(pause, 0, 0, QUEUE_FULL_RETRY_MS);
      }
    }
  }

  ready(status: string): boolean {
    return this.send({ READY: 1, STATUS: status, MAINPID: process.pid });
  }

  status(status: string): boolean {
    return this.send({ STATUS: status });
  }

  /** RELOADING=1 carries MONOTONIC_USEC, which systemd >= 253 requires and 252 ignores. */
  reloading(): boolean {
    return this.send({ RELOADING: 1, STATUS: "reloading configuration", MONOTONIC_USEC: monotonicUsec() });
  }

  stopping(): boolean {
    return this.send({ STOPPING: 1, STATUS: "stopping" });
  }

  extendTimeout(usec: number, status: string): boolean {
    return this.send({ EXTEND_TIMEOUT_USEC: Math.round(usec), STATUS: status });
  }

  watchdog(): boolean {
    return this.send({ WATCHDOG: 1 });
  }

  /**
   * Hands `fd` to systemd's file descriptor store under `name` (FDSTORE=1): PID 1 keeps a
   * copy across restarts of the unit and hands it back in LISTEN_FDS. `poll: false` for fds
   * that cannot be polled for hang-ups (FDPOLL=0).
   */
  storeFd(name: string, fd: number, poll: boolean): boolean {
    return this.send({ FDSTORE: 1, FDNAME: name, ...(poll ? {} : { FDPOLL: 0 }) }, [fd]);
  }

  /** Drops every fd stored under `name` (FDSTOREREMOVE=1): PID 1 closes its copies. */
  removeFd(name: string): boolean {
    return this.send({ FDSTOREREMOVE: 1, FDNAME: name });
  }

  close(): void {
    this.#sender?.close();
  }
}

/** CLOCK_MONOTONIC in microseconds: process.hrtime reads the same clock on Linux. */
export function monotonicUsec(): string {
  return (process.hrtime.bigint() / 1000n).toString();
}

const DECIMAL = /^[0-9]+$/;

/**
 * The watchdog interval systemd asks for, in microseconds, or null when none applies to this
 * process: WATCHDOG_USEC unset or empty, or WATCHDOG_PID naming another process (as go-systemd's
 * SdWatchdogEnabled). A malformed value throws a FatalError naming it: read as "no watchdog",
 * it would silently leave a hung daemon unsupervised.
 */
export function watchdogUsec(env: NodeJS.ProcessEnv, pid: number = process.pid): number | null {
  const text = env.WATCHDOG_USEC;
  if (!text) return null;
  const usec = Number(text);
  if (!DECIMAL.test(text) || !Number.isSafeInteger(usec) || usec <= 0) {
    throw new FatalError(
      ExitCode.CONFIG,
      `WATCHDOG_USEC='${text}' is not a positive whole number of microseconds: systemd sets it from the ` +
        "unit's WatchdogSec= (check it with systemctl cat gpu-persistd); when starting the daemon by hand, unset it",
    );
  }
  const owner = env.WATCHDOG_PID;
  if (!owner) return usec;
  if (!DECIMAL.test(owner) || !Number.isSafeInteger(Number(owner))) {
    throw new FatalError(
      ExitCode.CONFIG,
      `WATCHDOG_PID='${owner}' is not a process id: systemd sets it to the main PID beside WATCHDOG_USEC; ` +
        "when starting the daemon by hand, unset both",
    );
  }
  return Number(owner) === pid ? usec : null;
}
