// Who may have a connection, the same for the control socket and the RPC socket: the peer's
// kernel credentials, a slot under its uid's limit (with root's reserve), and every refusal,
// an unreadable peer included, in the rate-limited rejection log.
import type { Socket } from "node:net";
import { type PeerCredentials, peerCredentials } from "../../native-bindings/peer-credentials.js";
import type { Log } from "../log.js";
import { ConnectionSlots, type SlotLimits } from "./connection-slots.js";
import { RejectionLog } from "./rejection-log.js";
import { socketFd } from "./socket-fd.js";

export interface Admitted {
  peer: PeerCredentials;
  /** Gives the slot back; call it when the connection closes. */
  release: () => void;
}

export class ConnectionAdmission {
  readonly rejections: RejectionLog;
  readonly #slots: ConnectionSlots;

  /** `what` names the socket in log lines: "RPC", "control socket". */
  constructor(what: string, limits: SlotLimits, log: Log) {
    this.rejections = new RejectionLog(log, what);
    this.#slots = new ConnectionSlots(limits);
  }

  /** The peer and its slot, or null once the connection is refused (destroyed, and logged). */
  admit(socket: Socket): Admitted | null {
    let peer: PeerCredentials;
    try {
      peer = peerCredentials(socketFd(socket));
    } catch (err) {
      this.rejections.report(null, `cannot read its credentials (${(err as Error).message}); closing its connection`);
      socket.destroy();
      return null;
    }
    const release = this.#slots.take(peer.uid);
    if (typeof release === "string") {
      this.rejections.report(peer, `${release}; closing this one`);
      socket.destroy();
      return null;
    }
    return { peer, release };
  }
}
