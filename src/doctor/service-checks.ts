// The service side: the daemon it replaces, gpu-persistd's own unit, the configured user and
// group, the runtime directory with its sockets, and the running daemon.

import { statSync } from "node:fs";
import { join } from "node:path";
import type { Config } from "../config/schema.js";
import { fixes } from "../fixes.js";
import { CONTROL_SOCKET_NAME, PID_FILE_NAME, RPC_SOCKET_NAME } from "../runtime-dir.js";
import type { DaemonStatus } from "../status/daemon-status.js";
import { UNIT_NAME } from "../systemd/unit-name.js";
import { VERSION } from "../version.js";
import { type Check, fail, pass } from "./check.js";
import type { Account, HostRoot } from "./host-root.js";

const OURS = UNIT_NAME;
const THEIRS = "nvidia-persistenced.service";
const MASK_THEIRS = `systemctl disable --now ${THEIRS} && systemctl mask ${THEIRS}`;

/** Where the unit is masked (a symlink to /dev/null in /etc or /run), or null. */
function maskedAt(host: HostRoot, unit: string): string | null {
  return (
    ["/etc/systemd/system", "/run/systemd/system"]
      .map((d) => join(d, unit))
      .find((p) => host.link(p) === "/dev/null") ?? null
  );
}

/** nvidia-persistenced must not run beside gpu-persistd: both hold the GPUs and serve the same socket. */
export function persistencedCheck(host: HostRoot): Check {
  const title = "nvidia-persistenced (replaced)";
  const pids = host.processes("nvidia-persistenced");
  const masked = maskedAt(host, THEIRS);
  if (pids.length) {
    return fail(
      "nvidia-persistenced",
      title,
      `running (PID ${pids.join(", ")}): it holds the same GPUs and serves the same socket as gpu-persistd`,
      MASK_THEIRS,
    );
  }
  if (masked) {
    return pass(
      "nvidia-persistenced",
      title,
      `masked (${masked} -> /dev/null), not running; to go back to it later: systemctl unmask ${THEIRS}`,
    );
  }
  const wantedBy = host.enabledBy(THEIRS);
  if (wantedBy.length) {
    return fail(
      "nvidia-persistenced",
      title,
      `not running, but enabled (${wantedBy.join(", ")}): at the next boot it races gpu-persistd for the GPUs`,
      MASK_THEIRS,
    );
  }
  return pass(
    "nvidia-persistenced",
    title,
    host.unitFile(THEIRS) ? "installed, disabled and not running" : "not installed, not running",
  );
}

export function unitCheck(host: HostRoot): Check {
  const title = OURS;
  const file = host.unitFile(OURS);
  if (!file) {
    return fail(
      "unit",
      title,
      "no unit file in /etc/systemd/system, /run/systemd/system, /lib/systemd/system or /usr/lib/systemd/system",
      `install the package: apt-get install ./gpu-persistd_${VERSION}_amd64.deb`,
    );
  }
  const masked = maskedAt(host, OURS);
  if (masked) {
    return fail(
      "unit",
      title,
      `masked (${masked} -> /dev/null; 'apt-get remove' leaves this mask, and so does 'systemctl mask'): systemd will not start it`,
      `systemctl unmask ${OURS} && systemctl enable --now ${OURS}`,
    );
  }
  const wantedBy = host.enabledBy(OURS);
  if (!wantedBy.length) {
    return fail(
      "unit",
      title,
      `installed (${file}) but not enabled: it will not start at boot`,
      `systemctl enable --now ${OURS}`,
    );
  }
  return pass("unit", title, `enabled (${wantedBy.join(", ")}), ${file}`);
}

/** The configured user and group exist on the host; returns the account for the device check. */
export function accountCheck(host: HostRoot, config: Config): { check: Check; account: Account | null } {
  const title = "user and group";
  if (!config.user && !config.group) {
    return { check: pass("account", title, "none configured: the daemon stays root"), account: null };
  }
  const account = config.user ? host.account(config.user) : null;
  if (config.user && !account) {
    return {
      check: fail(
        "account",
        title,
        `user '${config.user}' does not exist`,
        config.user === "nvidia-persistenced"
          ? "systemd-sysusers gpu-persistd.conf (the package's sysusers file creates it)"
          : `useradd --system --no-create-home --home-dir / --shell /usr/sbin/nologin ${config.user}`,
      ),
      account: null,
    };
  }
  const gid = config.group ? host.groupId(config.group) : account?.gid;
  if (config.group && gid === null) {
    return {
      check: fail("account", title, `group '${config.group}' does not exist`, `groupadd --system ${config.group}`),
      account,
    };
  }
  const who = account ? `user ${account.name} (uid ${account.uid}, from ${account.source})` : "the starting user";
  const effective = account && gid !== undefined && gid !== null ? { ...account, gid } : account;
  return { check: pass("account", title, `${who}, gid ${gid}`), account: effective };
}

/** The runtime directory, its PID file and sockets, and the daemon answering on them. */
export function runtimeChecks(
  host: HostRoot,
  config: Config,
  daemon: DaemonStatus | null,
  daemonError: string,
): Check[] {
  const dir = config.runtimeDir;
  const startFix = `systemctl start ${OURS}; if it does not stay up: journalctl -u gpu-persistd -b -p warning`;
  if (!host.exists(dir)) {
    return [fail("runtime-dir", "runtime directory", `${dir} does not exist: gpu-persistd is not running`, startFix)];
  }
  const checks: Check[] = [];
  const pidText = host.read(join(dir, PID_FILE_NAME));
  const rpc = join(dir, RPC_SOCKET_NAME);
  let rpcMode = "";
  try {
    const st = statSync(host.path(rpc));
    rpcMode = st.isSocket() ? (st.mode & 0o777).toString(8).padStart(4, "0") : "not a socket";
  } catch {
    rpcMode = "missing";
  }
  if (pidText === null || rpcMode === "missing" || !host.exists(join(dir, CONTROL_SOCKET_NAME))) {
    const missing = [
      pidText === null ? PID_FILE_NAME : "",
      rpcMode === "missing" ? RPC_SOCKET_NAME : "",
      host.exists(join(dir, CONTROL_SOCKET_NAME)) ? "" : CONTROL_SOCKET_NAME,
    ].filter(Boolean);
    checks.push(fail("runtime-dir", "runtime directory", `${dir} lacks ${missing.join(", ")}`, startFix));
  } else if (rpcMode !== "0666") {
    checks.push(
      fail(
        "runtime-dir",
        "runtime directory",
        `${rpc} is ${rpcMode}, not 0666: nvidia-smi and other NVML clients that are not root cannot ask it`,
        `systemctl restart ${OURS} (the daemon sets 0666 when it creates the socket)`,
      ),
    );
  } else {
    checks.push(
      pass("runtime-dir", "runtime directory", `${dir}: PID file, ${RPC_SOCKET_NAME} (0666), ${CONTROL_SOCKET_NAME}`),
    );
  }
  if (!daemon) {
    checks.push(fail("daemon", "gpu-persistd daemon", daemonError, startFix));
  } else {
    const pid = Number(pidText?.trim());
    const selected = daemon.devices.filter((d) => d.selected);
    const held = selected.filter((d) => d.held).length;
    const flags = [daemon.simulated ? "simulated GPUs" : "", daemon.dryRun ? "dry run" : ""].filter(Boolean);
    const detail = `PID ${daemon.pid}, version ${daemon.version}, ${held}/${selected.length} GPUs held${flags.length ? ` (${flags.join(", ")})` : ""}`;
    // The daemon's own record: a selector that matches nothing, or a reload it refused, fails the next start too.
    const unmatched = daemon.unmatchedSelectors.map((t) => `'${t}'`).join(", ");
    const refused = daemon.lastReload?.refused;
    checks.push(
      pid !== daemon.pid
        ? fail(
            "daemon",
            "gpu-persistd daemon",
            `${detail}, but the PID file says ${pidText?.trim()}`,
            `systemctl restart ${OURS}`,
          )
        : unmatched
          ? fail(
              "daemon",
              "gpu-persistd daemon",
              `${detail}; --devices names ${unmatched}, which no GPU here has`,
              fixes.checkDevices,
            )
          : refused
            ? fail(
                "daemon",
                "gpu-persistd daemon",
                `${detail}; the last reload was refused: ${refused}`,
                fixes.checkDevices,
              )
            : pass("daemon", "gpu-persistd daemon", detail),
    );
  }
  return checks;
}
