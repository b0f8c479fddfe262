import { closeSync, readSync } from "node:fs";
import { ExitCode } from "../exit-codes.js";
import { FatalError } from "../fatal-error.js";
import { openRegularFile } from "../safe-files.js";
import {
  type Config,
  type ConfigKey,
  type ConfigValues,
  configSchema,
  DEFAULT_CONFIG_PATH,
  jsonTypeOf,
  newConfig,
  parsedConfig,
} from "./schema.js";

/** Config files are a few hundred bytes; anything this large is a mistake, not a config. */
const MAX_CONFIG_BYTES = 64 * 1024;

export interface ConfigSource {
  /** Path given with --config / GPU_PERSISTD_CONFIG; when absent the default may be missing. */
  path?: string;
  /** Where the config file is when no path is given (a missing default file is no error). */
  defaultPath?: string;
  /** Values from the command line, applied last. */
  overrides: Partial<ConfigValues>;
  /** The command-line option each override came from (`--log-format`), for a usage error. */
  overrideOptions?: Partial<Record<ConfigKey, string>>;
}

/** The file's values, type-checked; GPU indexes may be numbers there (`"devices": [0, 1]`). */
function checkedFileValues(values: Record<string, unknown>, origin: string): Record<string, unknown> {
  const checked: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(values)) {
    const want = jsonTypeOf(key as ConfigKey);
    const kind = Array.isArray(value) ? "array" : value === null ? "null" : typeof value;
    if (kind !== want) {
      throw new Error(`${key} in ${origin} is ${JSON.stringify(value)}, a JSON ${kind}; it must be a JSON ${want}`);
    }
    checked[key] =
      key === "devices"
        ? (value as unknown[]).map((d) => (typeof d === "number" && Number.isInteger(d) && d >= 0 ? String(d) : d))
        : value;
  }
  return checked;
}

function configError(message: string): FatalError {
  return new FatalError(ExitCode.CONFIG, message);
}

/** The file's text: a regular file (no device, FIFO or directory), at most MAX_CONFIG_BYTES. */
function readBounded(path: string): string {
  const { fd, size } = openRegularFile(path);
  try {
    if (size > MAX_CONFIG_BYTES) {
      throw configError(`config file ${path} is ${size} bytes; at most ${MAX_CONFIG_BYTES} are accepted`);
    }
    // One byte more than allowed: a file that grew since fstat is caught too.
    const buffer = Buffer.alloc(MAX_CONFIG_BYTES + 1);
    const read = readSync(fd, buffer, 0, buffer.length, 0);
    if (read > MAX_CONFIG_BYTES) throw configError(`config file ${path} is over ${MAX_CONFIG_BYTES} bytes`);
    return buffer.toString("utf8", 0, read);
  } finally {
    closeSync(fd);
  }
}

function readConfigFile(path: string, explicit: boolean): Record<string, unknown> {
  let text: string;
  try {
    text = readBounded(path);
  } catch (err) {
    if (err instanceof FatalError) throw err;
    const code = (err as NodeJS.ErrnoException).code;
    if (code === "ENOENT" && !explicit) return {};
    throw configError(`cannot read config file ${path}: ${(err as Error).message}`);
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    throw configError(`config file ${path} is not valid JSON: ${(err as Error).message}`);
  }
  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) {
    throw configError(`config file ${path} must hold a JSON object of settings, such as {"dryRun": true}`);
  }
  return parsed as Record<string, unknown>;
}

/** The config file `source` names, and whether it was named (a named file must exist). */
export function configFile(source: ConfigSource, env: NodeJS.ProcessEnv): { path: string; explicit: boolean } {
  const explicitPath = source.path ?? env.GPU_PERSISTD_CONFIG;
  return { path: explicitPath ?? source.defaultPath ?? DEFAULT_CONFIG_PATH, explicit: explicitPath !== undefined };
}

/**
 * Builds the configuration: defaults, then the config file, then GPU_PERSISTD_* variables,
 * then the command line. Throws FatalError (exit 78) naming the key, the value and what is
 * allowed.
 */
export function loadConfig(source: ConfigSource, env: NodeJS.ProcessEnv = process.env): Config {
  return loadConfigWithNotes(source, env).config;
}

/**
 * loadConfig, and what the admin should be told about it: each setting the config file
 * gives that the command line overrides (the unit's ExecStart passes --user, say), which
 * would otherwise be lost silently.
 */
export function loadConfigWithNotes(
  source: ConfigSource,
  env: NodeJS.ProcessEnv = process.env,
): { config: Config; notes: string[] } {
  const { path, explicit } = configFile(source, env);
  const fileValues = readConfigFile(path, explicit);
  const conf = newConfig();
  const origin = `config file ${path}`;
  try {
    // The file's keys are checked before loading, so a key that is not a setting is named
    // with its origin, not lost in convict's generic message.
    for (const key of Object.keys(fileValues)) {
      // Own keys of the schema only: "__proto__" or "toString" are not settings.
      if (!Object.hasOwn(configSchema, key)) {
        throw new Error(`unknown setting '${key}' in ${origin}; known settings: ${settingNames(conf)}`);
      }
    }
    conf.load(checkedFileValues(fileValues, origin));
    // The file and the environment first: their problems are configuration (78).
    conf.validate({ allowed: "strict" });
  } catch (err) {
    throw configError(`bad configuration: ${(err as Error).message}`);
  }
  // A bad command-line value is bad usage (64), named by its option; the rest is configuration (78).
  for (const [key, value] of Object.entries(source.overrides) as [ConfigKey, unknown][]) {
    if (value === undefined) continue;
    const alone = newConfig();
    alone.load(conf.getProperties());
    alone.set(key, value as never);
    try {
      alone.validate({ allowed: "strict" });
    } catch (err) {
      const option = source.overrideOptions?.[key] ?? key;
      throw new FatalError(
        ExitCode.USAGE,
        `option '${option}': ${(err as Error).message}. Run 'gpu-persistd --help' for the options.`,
      );
    }
    conf.set(key, value as never);
  }
  try {
    conf.validate({ allowed: "strict" });
  } catch (err) {
    throw configError(`bad configuration: ${(err as Error).message}`);
  }
  const values = conf.getProperties();
  const notes = Object.keys(fileValues)
    .filter((key) => source.overrides[key as ConfigKey] !== undefined)
    .filter(
      (key) =>
        JSON.stringify(checkedFileValues({ [key]: fileValues[key] }, origin)[key]) !==
        JSON.stringify(values[key as ConfigKey]),
    )
    .map(
      (key) =>
        `${key} ${JSON.stringify(fileValues[key])} in ${origin} is overridden by the command line ` +
        `(${source.overrideOptions?.[key as ConfigKey] ?? key} ${JSON.stringify(values[key as ConfigKey])}); ` +
        "under systemd the unit's ExecStart sets it: change it there (systemctl edit gpu-persistd)",
    );
  return { config: parsedConfig(values), notes };
}

function settingNames(conf: ReturnType<typeof newConfig>): string {
  return Object.keys(conf.getProperties()).join(", ");
}
