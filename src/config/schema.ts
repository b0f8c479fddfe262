// The one schema for every setting: config file keys, GPU_PERSISTD_* variables, defaults
// and validation. The command line (src/cli/options.ts) maps its flags onto these keys.
import convict from "convict";
import nodeFlags from "../node-flags.json" with { type: "json" };
import { type GpuSelector, parseGpuSelector } from "../selection/gpu-selector.js";
import { type ListenAddress, parseLoopbackAddress } from "./listen-address.js";

export const DEFAULT_CONFIG_PATH = "/etc/gpu-persistd/config.json";
export const SIMULATION_PROFILES = ["dgx-h100"] as const;
export const MAX_SIMULATED_GPUS = 256;
/**
 * Most GPUs brought up at once: the libuv pool's largest size (one thread per GPU, at most this
 * many: src/node-flags.json). More at once could not run in parallel: their calls would only
 * queue, as calls do when the health round or the Xid wait holds a thread during a reload (a
 * queued call's time limit does not run yet: native-bindings/libuv-pool.ts).
 */
export const MAX_BRING_UP_CONCURRENCY = nodeFlags.threadpool.max;
/** The longest delay a Node timer takes. */
export const MAX_TIMER_MS = 2 ** 31 - 1;

// Strict formats: a value that is not clearly of the type stays as given and fails
// validation, rather than being coerced (convict's Boolean turns "yes" into true silently).
const BOOLEAN_WORDS: Record<string, boolean> = {
  true: true,
  false: false,
  "1": true,
  "0": false,
  yes: true,
  no: false,
};

/** What a config file must give a setting of each format (no "yes" for true, no "0,1" for a list). */
export type JsonType = "boolean" | "number" | "array" | "string";

interface Format {
  json: JsonType;
  validate(value: unknown): void;
  coerce?(value: string): unknown;
}

/** A whole number from `min` to `max`, given in `unit` (named in the error). */
function integer(min: number, max: number, unit = ""): Format {
  return {
    json: "number",
    validate(value: unknown) {
      if (!Number.isInteger(value) || (value as number) < min || (value as number) > max) {
        throw new Error(`must be an integer from ${min} to ${max}${unit ? ` (${unit})` : ""}`);
      }
    },
    coerce: (value: string) => (/^\d+$/.test(value) ? Number(value) : value),
  };
}

const FORMATS = {
  flag: {
    json: "boolean",
    validate(value: unknown) {
      if (typeof value !== "boolean") throw new Error("must be true or false");
    },
    coerce: (value: string) => BOOLEAN_WORDS[value.toLowerCase()] ?? value,
  },
  // Node's timers hold at most 2^31-1 ms (24.8 days); a larger delay fires after 1 ms.
  milliseconds: integer(1, MAX_TIMER_MS, "milliseconds"),
  "milliseconds-or-zero": integer(0, MAX_TIMER_MS, "milliseconds"),
  "bring-up-concurrency": integer(1, MAX_BRING_UP_CONCURRENCY),
  "gpu-list": {
    json: "array",
    validate(value: unknown) {
      if (!Array.isArray(value)) throw new Error("must be a list of GPU indexes, UUIDs or PCI bus ids");
      const bad = value.find((v) => typeof v !== "string" || parseGpuSelector(v) === null);
      if (bad !== undefined) {
        throw new Error(
          `${JSON.stringify(bad)} is not a GPU index (0), UUID (GPU-...) or PCI bus id (00000000:18:00.0)`,
        );
      }
    },
    coerce: (value: string) => (value.trim() === "" ? [] : value.split(",").map((v) => v.trim())),
  },
  text: {
    json: "string",
    validate(value: unknown) {
      if (typeof value !== "string") throw new Error("must be a string");
    },
  },
  "loopback-address": {
    json: "string",
    validate(value: unknown) {
      if (typeof value !== "string") throw new Error("must be a string");
      if (value === "") return;
      const parsed = parseLoopbackAddress(value);
      if (typeof parsed === "string") throw new Error(parsed);
    },
  },
  "textfile-path": {
    json: "string",
    validate(value: unknown) {
      if (typeof value !== "string") throw new Error("must be a string");
      if (value === "") return;
      if (!value.startsWith("/") || !value.endsWith(".prom")) {
        throw new Error(
          `must be an absolute path ending in .prom (node_exporter reads only those), such as /var/lib/prometheus/node-exporter/gpu-persistd.prom`,
        );
      }
    },
  },
  simulation: {
    json: "string",
    validate(value: unknown) {
      if (typeof value !== "string") throw new Error("must be a string");
      if (value === "" || value === "on" || (SIMULATION_PROFILES as readonly string[]).includes(value)) return;
      if (/^\d+$/.test(value) && Number(value) >= 1 && Number(value) <= MAX_SIMULATED_GPUS) return;
      throw new Error(
        `must be "" (off), "on", a GPU count 1..${MAX_SIMULATED_GPUS} or a profile (${SIMULATION_PROFILES.join(", ")})`,
      );
    },
  },
} satisfies Record<string, Format>;
convict.addFormats(FORMATS);

interface Setting {
  doc: string;
  /** One of FORMATS, or the words allowed. */
  format: keyof typeof FORMATS | readonly string[];
  default: unknown;
  env: string;
  reload: "live" | "restart";
}

/**
 * Every setting. `reload` says what a SIGHUP does with a change: "live" settings are applied
 * at once (src/daemon/reload.ts has one applier for each, checked by the compiler), "restart"
 * ones are kept as they were, with a warning, until the daemon restarts.
 */
export const configSchema = {
  persistenceMode: {
    doc: "Hold every selected GPU at start (false: start with every GPU released).",
    format: "flag",
    default: true,
    env: "GPU_PERSISTD_PERSISTENCE_MODE",
    reload: "live" as const,
  },
  uvmPersistenceMode: {
    doc: "Also keep a UVM registration (/dev/nvidia-uvm) with each held GPU, as NVIDIA's --uvm-persistence-mode does.",
    format: "flag",
    default: false,
    env: "GPU_PERSISTD_UVM_PERSISTENCE_MODE",
    reload: "restart" as const,
  },
  user: {
    doc: "Run as this user after bring-up (empty: stay as started).",
    format: "text",
    default: "",
    env: "GPU_PERSISTD_USER",
    reload: "restart" as const,
  },
  group: {
    doc: "Run with this group after bring-up (empty: the user's primary group).",
    format: "text",
    default: "",
    env: "GPU_PERSISTD_GROUP",
    reload: "restart" as const,
  },
  logLevel: {
    doc: "Lowest level logged.",
    format: ["debug", "info", "warn", "error"] as const,
    default: "info",
    env: "GPU_PERSISTD_LOG_LEVEL",
    reload: "live" as const,
  },
  logFormat: {
    doc: "auto (journal under systemd, text on a terminal), text, json or journal.",
    format: ["auto", "text", "json", "journal"] as const,
    default: "auto",
    env: "GPU_PERSISTD_LOG_FORMAT",
    reload: "restart" as const,
  },
  nvidiaCfgPath: {
    doc: "Accepted for nvidia-persistenced compatibility; gpu-persistd enumerates GPUs through NVML.",
    format: "text",
    default: "",
    env: "GPU_PERSISTD_NVIDIA_CFG_PATH",
    reload: "restart" as const,
  },
  runtimeDir: {
    doc: "Directory for the PID file and sockets.",
    format: "text",
    default: "/run/nvidia-persistenced",
    env: "GPU_PERSISTD_RUNTIME_DIR",
    reload: "restart" as const,
  },
  nvmlLibrary: {
    doc: "The NVML library to load: a name for the dynamic loader, or a path.",
    format: "text",
    default: "libnvidia-ml.so.1",
    env: "GPU_PERSISTD_NVML_LIBRARY",
    reload: "restart" as const,
  },
  devices: {
    doc: "GPUs to hold: indexes, UUIDs or PCI bus ids (empty: all).",
    format: "gpu-list",
    default: [] as string[],
    env: "GPU_PERSISTD_DEVICES",
    reload: "live" as const,
  },
  dryRun: {
    doc: "Kept for scripts and the GPU suite: gpu-persistd never calls NVML's persistence setter (it holds GPUs by their nodes), so this changes nothing but is shown in status.",
    format: "flag",
    default: false,
    env: "GPU_PERSISTD_DRY_RUN",
    reload: "restart" as const,
  },
  simulate: {
    doc: 'Use the built-in simulated libnvidia-ml: "on", a GPU count, or a profile.',
    format: "simulation",
    default: "",
    env: "GPU_PERSISTD_SIMULATE",
    reload: "restart" as const,
  },
  nvmlTimeoutMs: {
    doc: "Time limit for one NVML call, in milliseconds.",
    format: "milliseconds",
    default: 10000,
    env: "GPU_PERSISTD_NVML_TIMEOUT_MS",
    reload: "live" as const,
  },
  bringUpConcurrency: {
    doc: `GPUs brought up at once, 1..${MAX_BRING_UP_CONCURRENCY} (1: one after another, as nvidia-persistenced does).`,
    format: "bring-up-concurrency",
    default: MAX_BRING_UP_CONCURRENCY,
    env: "GPU_PERSISTD_BRING_UP_CONCURRENCY",
    reload: "live" as const,
  },
  driverWaitMs: {
    doc: "How long to wait at start for the NVIDIA driver to load, in milliseconds (0: do not wait).",
    format: "milliseconds-or-zero",
    default: 60000,
    env: "GPU_PERSISTD_DRIVER_WAIT_MS",
    reload: "restart" as const,
  },
  healthIntervalMs: {
    doc: "Interval of the NVML health check, in milliseconds (at most half systemd's watchdog interval; a watchdog ping follows each check).",
    format: "milliseconds",
    default: 15000,
    env: "GPU_PERSISTD_HEALTH_INTERVAL_MS",
    reload: "live" as const,
  },
  stopTimeoutMs: {
    doc: "Time a stop may spend on NVML before the process exits anyway, in milliseconds.",
    format: "milliseconds",
    default: 1000,
    env: "GPU_PERSISTD_STOP_TIMEOUT_MS",
    reload: "live" as const,
  },
  releaseTimeoutMs: {
    doc: "Time a release (RPC Set DISABLED, gpu-persistd release) waits for NVML calls in flight before it is refused and the GPU held again, in milliseconds.",
    format: "milliseconds",
    default: 1000,
    env: "GPU_PERSISTD_RELEASE_TIMEOUT_MS",
    reload: "live" as const,
  },
  metricsListen: {
    doc: 'Serve Prometheus metrics at http://ADDRESS/metrics, on loopback only ("127.0.0.1:9400"; empty: off).',
    format: "loopback-address",
    default: "",
    env: "GPU_PERSISTD_METRICS_LISTEN",
    reload: "restart" as const,
  },
  metricsTextfile: {
    doc: "Write Prometheus metrics to this .prom file for node_exporter's textfile collector, every health interval (empty: off).",
    format: "textfile-path",
    default: "",
    env: "GPU_PERSISTD_METRICS_TEXTFILE",
    reload: "restart" as const,
  },
  healthCheckDrainReleased: {
    doc: "With health-check: a GPU an admin released (a reset, a MIG change) counts as unhealthy, so --slurm drains the node (false: such a deliberate, usually brief release leaves scheduling alone).",
    format: "flag",
    default: false,
    env: "GPU_PERSISTD_HEALTH_CHECK_DRAIN_RELEASED",
    // Each health-check run reads it; the daemon itself never does.
    reload: "live" as const,
  },
} satisfies Record<string, Setting>;

export type ConfigKey = keyof typeof configSchema;

/** The settings a SIGHUP applies at once. */
export type LiveKey = { [K in ConfigKey]: (typeof configSchema)[K]["reload"] extends "live" ? K : never }[ConfigKey];

export function reloadPolicy(key: ConfigKey): "live" | "restart" {
  return configSchema[key].reload;
}

/** A setting's value: one of its format's words, else its default's type. */
type SettingValue<S> = S extends { format: readonly (infer Word)[] }
  ? Word
  : S extends { default: infer D }
    ? D
    : never;

/** The configuration as written (file, environment, command line), as the schema defines it. */
export type ConfigValues = { -readonly [K in ConfigKey]: SettingValue<(typeof configSchema)[K]> };

/**
 * The configuration as the daemon uses it: what the schema validated by parsing is held
 * parsed (GPU selectors, a listen address), so no consumer parses it again.
 */
export type Config = Omit<ConfigValues, "devices" | "metricsListen"> & {
  devices: GpuSelector[];
  /** Null when off. */
  metricsListen: ListenAddress | null;
};

/** Parses what the schema has validated (a value that would not parse was refused there). */
export function parsedConfig(values: ConfigValues): Config {
  const address = values.metricsListen === "" ? null : parseLoopbackAddress(values.metricsListen);
  if (typeof address === "string") throw new Error(`metricsListen: ${address}`);
  return {
    ...values,
    devices: values.devices.flatMap((d) => parseGpuSelector(d) ?? []),
    metricsListen: address,
  };
}

/** The JSON type a config file must give `key`. */
export function jsonTypeOf(key: ConfigKey): JsonType {
  const { format } = configSchema[key];
  return typeof format === "string" ? FORMATS[format].json : "string";
}

export function newConfig(): convict.Config<ConfigValues> {
  const schema = Object.fromEntries(Object.entries(configSchema).map(([key, { reload: _, ...item }]) => [key, item]));
  return convict<ConfigValues>(schema as unknown as convict.Schema<ConfigValues>);
}
