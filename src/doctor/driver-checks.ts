// The driver side: kernel module, device nodes and their permissions for the daemon's user,
// the NVML library and whether it matches the loaded kernel module.
import { statSync } from "node:fs";
import { fixes } from "../fixes.js";
import type { DaemonStatus } from "../status/daemon-status.js";
import { type Check, fail, pass } from "./check.js";
import { type Account, accountMay, type HostRoot } from "./host-root.js";

const MODULE_FIX =
  "modprobe nvidia (to load it at boot: echo nvidia > /etc/modules-load.d/nvidia.conf); " +
  "if the module is missing, install the NVIDIA driver (Debian: apt-get install nvidia-driver)";

/** The kernel module's version from /proc/driver/nvidia/version, or null. */
export function kernelDriverVersion(host: HostRoot): string | null {
  const text = host.read("/proc/driver/nvidia/version") ?? "";
  return /Kernel Module(?: for \S+)?\s+(\S+)/.exec(text)?.[1] ?? null;
}

export function kernelModuleCheck(host: HostRoot): Check {
  const title = "NVIDIA kernel module";
  // /sys/module also lists a driver built into the kernel, which /proc/modules does not.
  const listed = (host.read("/proc/modules") ?? "").split("\n").some((l) => l.startsWith("nvidia "));
  if (!listed && !host.exists("/sys/module/nvidia")) {
    return fail(
      "kernel-module",
      title,
      "the nvidia module is not loaded (neither /proc/modules nor /sys/module lists it)",
      MODULE_FIX,
    );
  }
  const version = kernelDriverVersion(host);
  return pass("kernel-module", title, `nvidia loaded, driver ${version ?? "(version not readable)"}`);
}

/** /dev/nvidiactl and /dev/nvidiaN, in that order. */
function deviceNodes(host: HostRoot): string[] {
  const gpus = host
    .list("/dev")
    .filter((n) => /^nvidia\d+$/.test(n))
    .sort((a, b) => Number(a.slice(6)) - Number(b.slice(6)));
  return [...(host.exists("/dev/nvidiactl") ? ["nvidiactl"] : []), ...gpus].map((n) => `/dev/${n}`);
}

/**
 * The nodes exist, and the daemon's user (null: it stays root) may open them: it opens them
 * again after the drop, to re-hold a GPU or hold one an RPC client asks for.
 */
export function deviceNodeChecks(host: HostRoot, account: Account | null): Check[] {
  const nodes = deviceNodes(host);
  const gpus = nodes.filter((n) => n !== "/dev/nvidiactl");
  if (!nodes.includes("/dev/nvidiactl") || gpus.length === 0) {
    const missing = [nodes.includes("/dev/nvidiactl") ? "" : "/dev/nvidiactl", gpus.length ? "" : "/dev/nvidia0..N"]
      .filter(Boolean)
      .join(" and ");
    return [fail("device-nodes", "GPU device nodes", `${missing} missing`, fixes.deviceNodesMissing)];
  }
  const found = pass("device-nodes", "GPU device nodes", `${nodes.join(", ")}`);
  const title = `device access for ${account ? `user ${account.name}` : "root"}`;
  if (!account) return [found, pass("device-access", title, "the daemon stays root (no user configured)")];
  const denied = nodes.filter((n) => !accountMay(account, statSync(host.path(n)), 6));
  if (!denied.length) {
    return [found, pass("device-access", title, `${account.name} may read and write every node`)];
  }
  const st = statSync(host.path(denied[0] as string));
  const mode = (st.mode & 0o777).toString(8).padStart(4, "0");
  return [
    found,
    fail(
      "device-access",
      title,
      `${account.name} (uid ${account.uid}) cannot open ${denied.join(", ")} for reading and writing (mode ${mode}, owner ${st.uid}:${st.gid})`,
      `usermod -aG ${st.gid} ${account.name} (the nodes' group), or have the driver create them 0666: ` +
        "options nvidia NVreg_DeviceFileMode=0666 in /etc/modprobe.d/nvidia.conf, then reload the module",
    ),
  ];
}

/**
 * GPUs with coherent memory (GH200, GB200): the driver onlines their memory as a NUMA node
 * only into ZONE_MOVABLE, so auto_online_blocks must be online_movable. CDMM mode
 * (NVreg_CoherentGPUMemoryMode=driver) has no NUMA node at all: reported, not a failure.
 */
export function numaCheck(host: HostRoot, daemon: DaemonStatus | null): Check {
  const title = "coherent GPU memory (NUMA)";
  const gpuDirs = host.list("/proc/driver/nvidia/gpus");
  const fromProc = gpuDirs.filter((bdf) => {
    const status = host.read(`/proc/driver/nvidia/gpus/${bdf}/numa_status`)?.trim();
    return status !== undefined && status !== "" && status !== "disabled";
  });
  const fromDaemon = (daemon?.devices ?? []).filter((d) => d.numa !== null).map((d) => d.pciBusId);
  const coherent = [...new Set([...fromProc, ...fromDaemon])];
  const cdmm = /^CoherentGPUMemoryMode:\s*"?([^"\n]*)"?\s*$/m.exec(host.read("/proc/driver/nvidia/params") ?? "")?.[1];
  const mode =
    cdmm === undefined
      ? ""
      : `; CoherentGPUMemoryMode ${cdmm || "(driver default)"}${cdmm === "driver" ? " (CDMM: no NUMA node)" : ""}`;
  if (coherent.length === 0) return pass("numa", title, `no GPU with coherent memory${mode}`);
  const blocks = host.read("/sys/devices/system/memory/auto_online_blocks")?.trim() ?? "unreadable";
  const what = `${coherent.length} GPU(s) with coherent memory (${coherent.join(", ")}); auto_online_blocks ${blocks}${mode}`;
  return blocks === "online_movable"
    ? pass("numa", title, what)
    : fail(
        "numa",
        title,
        what,
        "echo online_movable > /sys/devices/system/memory/auto_online_blocks (at boot: memhp_default_state=online_movable on the kernel command line), then restart gpu-persistd",
      );
}
