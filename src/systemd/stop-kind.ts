// Which stop this is, for systemd's fd store. The unit keeps the store across every stop
// (FileDescriptorStorePreserve=yes: without it a soft reboot would drop the GPUs), so the
// daemon empties it itself when it stops for good. Only the unit's ExecStop= can tell the
// stops apart: it runs as root outside the sandbox and asks PID 1 for its jobs. When this
// unit's own job is a restart, or soft-reboot.target is being started, it stops the daemon
// with SIGUSR2 instead of leaving it to systemd's SIGTERM. Every other end (systemctl stop,
// isolate, reboot, poweroff, systemctl kill, Ctrl-C) is a stop for good: on systemd 252,
// which ignores the key, that is what PID 1 does with the store anyway. A crash runs no
// handler, and Restart= brings the daemon back to what the store kept.

/** "keep": the next run (after a restart or a soft reboot) adopts the GPUs the store holds. */
export type StopKind = "for-good" | "keep";

/** The signals the daemon stops on, and the stop each one asks for. */
export const STOP_SIGNALS = {
  SIGTERM: "for-good",
  SIGINT: "for-good",
  SIGUSR2: "keep",
} as const satisfies Record<string, StopKind>;

/** Why a stop of `kind` leaves the store as it does, for the "stopping" line. */
export function storeAtStop(kind: StopKind): string {
  return kind === "keep"
    ? "the GPUs stay in systemd's fd store for the next run (a restart or a soft reboot is under way)"
    : "systemd's fd store is emptied: every GPU is let go";
}
