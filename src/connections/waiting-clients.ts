// NVML waits for the persistence daemon's answer without a time limit, so a client that
// connected to the socket unit's socket while this daemon was starting would wait until some
// later start answers it. A start that fails lets them go at once: their connections are
// closed unanswered, and NVML then reads the kernel's flag (measured: at once).
import { closeWaitingConnections, unixSocketPath } from "../../native-bindings/libc.js";
import type { PassedFd } from "../systemd/listen-fds.js";

/** Closes every connection waiting on the listening sockets among `fds`; returns how many. */
export function letWaitingClientsGo(fds: readonly PassedFd[]): number {
  let closed = 0;
  for (const { fd } of fds) if (unixSocketPath(fd) !== null) closed += closeWaitingConnections(fd);
  return closed;
}
