// The command line's one option table: parsing, --help and the man page all read it.
import type { Config, ConfigValues } from "../config/schema.js";

export interface OptionSpec {
  long: string;
  short?: string;
  /** Placeholder for the value; absent for flags. */
  value?: string;
  /** The value may be left out (`--simulate` alone). */
  optionalValue?: boolean;
  help: string;
  /** Where the option's value lands in the configuration. */
  apply?: (value: string | boolean) => Partial<ConfigValues>;
  /** Option kept from nvidia-persistenced. */
  upstream?: boolean;
}

export const OPTIONS: readonly OptionSpec[] = [
  { long: "version", short: "v", help: "Print the version and exit.", upstream: true },
  { long: "help", short: "h", help: "Print this help and exit.", upstream: true },
  {
    long: "verbose",
    short: "V",
    help: "Log debug messages too.",
    apply: () => ({ logLevel: "debug" }),
    upstream: true,
  },
  {
    long: "user",
    short: "u",
    value: "USER",
    help: "Run as USER after the GPUs are held; the group becomes USER's primary group unless --group is given.",
    apply: (v) => ({ user: String(v) }),
    upstream: true,
  },
  {
    long: "group",
    short: "g",
    value: "GROUP",
    help: "Run with GROUP's id after the GPUs are held, whatever --user says.",
    apply: (v) => ({ group: String(v) }),
    upstream: true,
  },
  {
    long: "persistence-mode",
    help: "Hold every selected GPU at start (default).",
    apply: () => ({ persistenceMode: true }),
    upstream: true,
  },
  {
    long: "no-persistence-mode",
    help: "Start with every GPU released.",
    apply: () => ({ persistenceMode: false }),
    upstream: true,
  },
  {
    long: "uvm-persistence-mode",
    help: "Also keep a UVM registration with each held GPU (needs nvidia-uvm loaded; blocks runtime D3).",
    apply: () => ({ uvmPersistenceMode: true }),
    upstream: true,
  },
  {
    long: "no-uvm-persistence-mode",
    help: "Do not keep UVM registrations (default).",
    apply: () => ({ uvmPersistenceMode: false }),
    upstream: true,
  },
  {
    long: "nvidia-cfg-path",
    value: "PATH",
    help: "Accepted for compatibility and ignored: gpu-persistd finds GPUs through NVML, not libnvidia-cfg.",
    apply: (v) => ({ nvidiaCfgPath: String(v) }),
    upstream: true,
  },
  {
    long: "foreground",
    short: "f",
    help: "Accepted for compatibility: gpu-persistd always runs in the foreground.",
  },
  {
    long: "config",
    value: "FILE",
    help: "Read settings from FILE (default /etc/gpu-persistd/config.json).",
  },
  {
    long: "runtime-dir",
    value: "DIR",
    help: "Directory for the PID file and sockets (default /run/nvidia-persistenced).",
    apply: (v) => ({ runtimeDir: String(v) }),
  },
  {
    long: "nvml-library",
    value: "PATH",
    help: "The NVML library to load (default libnvidia-ml.so.1).",
    apply: (v) => ({ nvmlLibrary: String(v) }),
  },
  {
    long: "devices",
    value: "LIST",
    help: "Hold only these GPUs: comma-separated indexes, UUIDs or PCI bus ids (default: all).",
    apply: (v) => ({
      devices: String(v)
        .split(",")
        .map((s) => s.trim()),
    }),
  },
  {
    long: "dry-run",
    help: "Changes nothing (gpu-persistd never calls NVML's persistence setter); kept for scripts.",
    apply: () => ({ dryRun: true }),
  },
  {
    long: "simulate",
    value: "N|PROFILE",
    optionalValue: true,
    help: "Use the built-in simulated libnvidia-ml: N GPUs, or a profile (dgx-h100); alone, as its config file says.",
    apply: (v) => ({ simulate: v === true || v === "" ? "on" : String(v) }),
  },
  {
    long: "log-format",
    value: "FORMAT",
    help: "auto (journal under systemd, text otherwise), text, json or journal.",
    apply: (v) => ({ logFormat: String(v) as Config["logFormat"] }),
  },
  {
    long: "metrics-listen",
    value: "ADDRESS",
    help: "Serve Prometheus metrics at http://ADDRESS/metrics, loopback only (127.0.0.1:9400, [::1]:9400).",
    apply: (v) => ({ metricsListen: String(v) }),
  },
  {
    long: "metrics-textfile",
    value: "FILE",
    help: "Write Prometheus metrics to FILE (*.prom) for node_exporter's textfile collector.",
    apply: (v) => ({ metricsTextfile: String(v) }),
  },
  { long: "json", help: "With status and doctor: print JSON." },
  {
    long: "root",
    value: "DIR",
    help: "With doctor: examine the system laid out under DIR instead of / (an image, a test tree).",
  },
  {
    long: "slurm",
    help: "With health-check: also drain this Slurm node while a GPU is not held, and resume it once all are (only a node it drained itself).",
  },
  {
    long: "timeout",
    value: "SECONDS",
    help: "With wait: how long to wait for the daemon (default 60).",
  },
];
