// gpu-persistd(8), in roff, from the same option table as --help.
import { configSchema } from "../config/schema.js";
import { VERSION } from "../version.js";
import { OPTIONS, type OptionSpec } from "./options.js";

function roff(text: string): string {
  return text.replaceAll("\\", "\\\\").replaceAll("-", "\\-").replace(/^\./gm, "\\&.");
}

function optionItem(o: OptionSpec): string {
  const value = o.value ? (o.optionalValue ? `[=\\fI${o.value}\\fR]` : ` \\fI${o.value}\\fR`) : "";
  const forms = [o.short ? `\\fB\\-${o.short}\\fR${value}` : "", `\\fB\\-\\-${roff(o.long)}\\fR${value}`].filter(
    Boolean,
  );
  return `.TP\n${forms.join(", ")}\n${roff(o.help)}${o.upstream ? "" : " (gpu\\-persistd only.)"}`;
}

function settingItem([key, spec]: [string, { doc: string; env: string; default: unknown; reload: string }]): string {
  const reload = spec.reload === "live" ? "Applied by a reload (SIGHUP)." : "Takes effect at the next start.";
  return `.TP\n\\fB${key}\\fR (\\fB${spec.env}\\fR; default ${roff(JSON.stringify(spec.default))})\n${roff(`${spec.doc} ${reload}`)}`;
}

export function manPage(): string {
  return [
    `.TH GPU-PERSISTD 8 "" "gpu-persistd ${VERSION}" "System Administration"`,
    ".SH NAME",
    "gpu\\-persistd \\- keep NVIDIA GPUs initialised (a drop\\-in replacement for nvidia\\-persistenced)",
    ".SH SYNOPSIS",
    "\\fBgpu\\-persistd\\fR [\\fIoptions\\fR]",
    ".br",
    "\\fBgpu\\-persistd status\\fR [\\fB\\-\\-json\\fR]",
    ".br",
    "\\fBgpu\\-persistd release\\fR|\\fBhold\\fR \\fIGPU\\fR...",
    ".br",
    "\\fBgpu\\-persistd release\\fR \\fIGPU\\fR... \\fB\\-\\-\\fR \\fICOMMAND\\fR [\\fIARGS\\fR]",
    ".br",
    "\\fBgpu\\-persistd wait\\fR [\\fB\\-\\-timeout\\fR=\\fISECONDS\\fR]",
    ".br",
    "\\fBgpu\\-persistd doctor\\fR [\\fB\\-\\-json\\fR] [\\fB\\-\\-root\\fR \\fIDIR\\fR]",
    ".br",
    "\\fBgpu\\-persistd health\\-check\\fR [\\fB\\-\\-slurm\\fR]",
    ".SH DESCRIPTION",
    "gpu\\-persistd holds an open file descriptor on every selected GPU's device node, so the NVIDIA",
    "driver keeps the GPU initialised when its last client exits, and enables persistence through",
    "NVML where it reads off. It runs in the foreground under systemd (Type=notify), brings all GPUs up",
    "in parallel, gates systemd's watchdog on NVML health checks, logs to the journal with per\\-GPU",
    "fields, and reloads its configuration on SIGHUP. SIGTERM stops it and lets every GPU go, systemd's",
    "file descriptor store included; SIGUSR2 stops it leaving the GPUs in that store for the next run",
    "(the unit's ExecStop= sends it before a restart or a soft reboot).",
    ".SH OPTIONS",
    ...OPTIONS.map(optionItem),
    ".SH COMMANDS",
    ".TP",
    "\\fBstatus\\fR [\\fB\\-\\-json\\fR]",
    "What the running daemon holds, per GPU.",
    ".TP",
    "\\fBrelease\\fR \\fIGPU\\fR..., \\fBhold\\fR \\fIGPU\\fR...",
    "Let go of GPUs completely (for a reset, MIG change or vfio), or hold them again. Root only.",
    ".TP",
    "\\fBrelease\\fR \\fIGPU\\fR... \\fB\\-\\-\\fR \\fICOMMAND\\fR [\\fIARGS\\fR]",
    "Release the GPUs, run COMMAND, hold them again however it ends (also when this command is",
    "killed), and exit with its code. Root only.",
    ".TP",
    "\\fBwait\\fR [\\fB\\-\\-timeout\\fR=\\fISECONDS\\fR]",
    "Block until the daemon is ready: exit 0 when every selected GPU is held, 1 when some are not,",
    "69 when no daemon answered in time (default 60 s). Any user.",
    ".TP",
    "\\fBdoctor\\fR [\\fB\\-\\-json\\fR] [\\fB\\-\\-root\\fR \\fIDIR\\fR]",
    "Check the kernel module, device nodes and their access, NVML and its version against the",
    "kernel module, nvidia\\-persistenced (running, enabled or masked), the unit (masked, enabled),",
    "the user and group, the runtime directory and sockets, the daemon, and each GPU; print the fix",
    "for each failure. Exit 0 when all pass, 1 otherwise. It changes nothing.",
    ".TP",
    "\\fBhealth\\-check\\fR [\\fB\\-\\-slurm\\fR]",
    "One line starting \\(lqgpu\\-persistd:\\(rq, judged from the daemon's status alone: exit 0 when every",
    "GPU the daemon wants held is held (none with persistenceMode false), 1 when one is lost, failed or",
    "missing (named, with the cause), 69 when no daemon answers. With \\fB\\-\\-slurm\\fR (what",
    "/usr/lib/gpu\\-persistd/slurm\\-health\\-check runs for Slurm's HealthCheckProgram) it also drains the",
    "node with that line as the reason, and resumes only a node whose reason starts with",
    "\\(lqgpu\\-persistd:\\(rq, so an admin's drain is never undone. A GPU an admin released does not",
    "drain unless healthCheckDrainReleased is true.",
    ".SH SETTINGS",
    "Keys of /etc/gpu\\-persistd/config.json (a JSON object), each also a variable; the command line",
    "wins over the variables, which win over the file.",
    ...Object.entries(configSchema).map(settingItem),
    ".SH FILES",
    ".TP",
    "/etc/gpu\\-persistd/config.json",
    "Settings; every option has a key there and a GPU_PERSISTD_* variable.",
    ".TP",
    "/run/nvidia\\-persistenced/nvidia\\-persistenced.pid",
    "The PID file, locked while the daemon runs.",
    ".TP",
    "/run/nvidia\\-persistenced/socket",
    "The persistence RPC socket (program 35006) that NVML clients (nvidia\\-smi, pynvml, DCGM) ask.",
    ".TP",
    "/run/nvidia\\-persistenced/gpu\\-persistd.sock",
    "The control socket: status for any user; release for root.",
    ".TP",
    "/lib/udev/rules.d/71\\-gpu\\-persistd.rules",
    "Starts the service when the nvidia kernel module loads.",
    ".SH EXIT STATUS",
    "0 clean stop, 64 bad usage, 67 unknown user or group, 69 NVML or driver unavailable,",
    "77 not permitted, 78 bad configuration, 1 other failure.",
    ".SH SEE ALSO",
    "\\fBnvidia\\-persistenced\\fR(1), \\fBnvidia\\-smi\\fR(1), \\fBsystemctl\\fR(1), \\fBjournalctl\\fR(1)",
    "",
  ].join("\n");
}
