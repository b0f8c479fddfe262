// sd_listen_fds_with_names(3), in-process: the file descriptors systemd passed at start
// (socket units' listening sockets, and what the fd store kept from the previous run), from
// LISTEN_FDS, LISTEN_FDNAMES and LISTEN_PID. They start at fd 3.
const FIRST_FD = 3;

export interface PassedFd {
  fd: number;
  /** FDNAME= as stored, the socket unit's FileDescriptorName=, or "unknown". */
  name: string;
}

/**
 * The fds passed to this process. Returns [] when none are: LISTEN_FDS unset, or
 * LISTEN_PID naming another process (the variables were inherited, not meant for us).
 * Throws Error naming the variable when LISTEN_FDS is not a count. Removes the variables
 * from `env` either way, so that nothing started later takes the fds for its own.
 */
export function passedFds(env: NodeJS.ProcessEnv, pid: number = process.pid): PassedFd[] {
  const { LISTEN_FDS: count, LISTEN_FDNAMES: names, LISTEN_PID: listenPid } = env;
  delete env.LISTEN_FDS;
  delete env.LISTEN_FDNAMES;
  delete env.LISTEN_PID;
  if (count === undefined || count === "") return [];
  if (listenPid !== undefined && Number(listenPid) !== pid) return [];
  if (!/^\d+$/.test(count)) throw new Error(`LISTEN_FDS=${JSON.stringify(count)} is not a number of file descriptors`);
  const n = Number(count);
  const given = names === undefined ? [] : names.split(":");
  return Array.from({ length: n }, (_, i) => ({
    fd: FIRST_FD + i,
    name: given.length === n ? (given[i] ?? "unknown") : "unknown",
  }));
}
