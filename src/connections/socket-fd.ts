import type { Socket } from "node:net";

/** The file descriptor under a net.Socket, for getsockopt; -1 when it has none. */
export function socketFd(socket: Socket): number {
  return (socket as unknown as { _handle?: { fd?: number } })._handle?.fd ?? -1;
}
