import { VERSION } from "../version.js";
import { OPTIONS, type OptionSpec } from "./options.js";

export function versionText(): string {
  return [
    `gpu-persistd version ${VERSION}`,
    "  The NVIDIA persistence daemon, as a systemd-supervised service:",
    "  keeps every GPU initialised so CUDA programs do not pay for driver start-up.",
    "  A drop-in replacement for nvidia-persistenced.",
    "",
  ].join("\n");
}

function optionForms(o: OptionSpec): string {
  const value = o.value ? (o.optionalValue ? `[=${o.value}]` : `=${o.value}`) : "";
  const long = `--${o.long}${value}`;
  return o.short ? `-${o.short}${o.value ? ` ${o.value}` : ""}, ${long}` : long;
}

/** The usage lines of --help, also shown in docs/operations.md ("Usage", checked by the docs test). */
export const USAGE = [
  "gpu-persistd [options]            run the daemon (in the foreground)",
  "gpu-persistd status [--json]      show what the running daemon holds",
  "gpu-persistd release GPU...       let GPUs go completely (index, UUID or PCI bus id)",
  "gpu-persistd hold GPU...          hold them again",
  "gpu-persistd release GPU... -- COMMAND [ARGS]",
  "                                  release, run COMMAND, hold again when it ends",
  "gpu-persistd wait [--timeout=S]   wait until the daemon is ready (0 all held, 1 some not, 69 none)",
  "gpu-persistd doctor [--json]      check driver, devices, units, user and GPUs; say each fix",
  "gpu-persistd health-check [--slurm]",
  "                                  one line: every GPU held? (0 yes, 1 no, 69 no daemon); --slurm drains/resumes",
] as const;

export function helpText(): string {
  const lines = [versionText(), ...USAGE.map((line, i) => `${i === 0 ? "Usage: " : "       "}${line}`), "", "Options:"];
  for (const o of OPTIONS) {
    lines.push(`  ${optionForms(o)}`, `      ${o.help}`, "");
  }
  lines.push(
    "Settings also come from /etc/gpu-persistd/config.json and GPU_PERSISTD_* variables;",
    "the command line wins. Exit codes: 0 clean stop, 64 bad usage, 67 unknown user,",
    "69 NVML or driver unavailable, 77 not permitted, 78 bad configuration, 1 other failure.",
    "",
  );
  return lines.join("\n");
}
