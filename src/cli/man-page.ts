// gpu-persistd(8), in roff, from the same option table as --help.
import { VERSION } from "./help.js";
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
    "\\fBgpu\\-persistd release\\fR|\\fBhold\\fR \\fIGPU\\fR",
    ".br",
    "\\fBgpu\\-persistd doctor\\fR [\\fB\\-\\-json\\fR] [\\fB\\-\\-root\\fR \\fIDIR\\fR]",
    ".SH DESCRIPTION",
    "gpu\\-persistd holds an open file descriptor on every selected GPU's device node, so the NVIDIA",
    "driver keeps the GPU initialised when its last client exits, and enables persistence through",
    "NVML where it reads off. It runs in the foreground under systemd (Type=notify), brings all GPUs up",
    "in parallel, gates systemd's watchdog on NVML health checks, logs to the journal with per\\-GPU",
    "fields, and reloads its configuration on SIGHUP.",
    ".SH OPTIONS",
    ...OPTIONS.map(optionItem),
    ".SH FILES",
    ".TP",
    "/etc/gpu\\-persistd/config.json",
    "Settings; every option has a key there and a GPU_PERSISTD_* variable.",
    ".TP",
    "/run/nvidia\\-persistenced/nvidia\\-persistenced.pid",
    "The PID file, locked while the daemon runs.",
    ".TP",
    "/run/nvidia\\-persistenced/gpu\\-persistd.sock",
    "The status socket.",
    ".SH EXIT STATUS",
    "0 clean stop, 64 bad usage, 67 unknown user or group, 69 NVML or driver unavailable,",
    "77 not permitted, 78 bad configuration, 1 other failure.",
    ".SH SEE ALSO",
    "\\fBnvidia\\-smi\\fR(1), \\fBsystemctl\\fR(1), \\fBjournalctl\\fR(1)",
    "",
  ].join("\n");
}
