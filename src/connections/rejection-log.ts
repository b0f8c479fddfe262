// Refused and malformed requests are logged with the peer's pid and uid, but at most
// `perWindow` lines a window: a hostile client must not flood the journal either. What the
// client sent appears only through clientText (quoted, cut short).
import type { PeerCredentials } from "../../native-bindings/peer-credentials.js";
import type { Log } from "../log.js";

export class RejectionLog {
  readonly #log: Log;
  readonly #perWindow: number;
  readonly #windowMs: number;
  #windowStart = 0;
  #logged = 0;
  #suppressed = 0;

  readonly #what: string;

  /** `what` names the socket in each line: "RPC", "control socket". */
  constructor(log: Log, what: string, perWindow = 20, windowMs = 60_000) {
    this.#log = log;
    this.#what = what;
    this.#perWindow = perWindow;
    this.#windowMs = windowMs;
  }

  /** `peer` null: a client whose credentials could not be read. */
  report(peer: PeerCredentials | null, reason: string): void {
    const now = performance.now();
    if (now - this.#windowStart >= this.#windowMs) {
      if (this.#suppressed > 0) {
        this.#log.warn(`${this.#what}: ${this.#suppressed} more rejected requests were not logged in the last window`);
      }
      this.#windowStart = now;
      this.#logged = 0;
      this.#suppressed = 0;
    }
    if (this.#logged >= this.#perWindow) {
      this.#suppressed++;
      return;
    }
    this.#logged++;
    if (!peer) {
      this.#log.warn(`${this.#what}: rejected a client: ${reason}`);
      return;
    }
    this.#log.warn(
      { peerPid: peer.pid, peerUid: peer.uid },
      `${this.#what}: rejected a request from pid ${peer.pid} (uid ${peer.uid}): ${reason}`,
    );
  }
}
