import { closeSync, readSync } from "node:fs";
import { ExitCode } from "../exit-codes.js";
import { FatalError } from "../fatal-error.js";
import { openRegularFile } from "../safe-files.js";
import { type Config, type ConfigKey, configSchema, DEFAULT_CONFIG_PATH, newConfig } from "./schema.js";

/** Config files are a few hundred bytes; anything this large is a mistake, not a config. */
const MAX_CONFIG_BYTES = 64 * 1024;

export interface ConfigSource {
  /** Path given with --config / GPU_PERSISTD_CONFIG; when absent the default may be missing. */
  path?: string;
  /** Where the config file is when no path is given (a missing default file is no error). */
  defaultPath?: string;
  /** Values from the command line, applied last. */
  overrides: Partial<Config>;
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
    conf.load(fileValues);
    for (const [key, value] of Object.entries(source.overrides)) {
      if (value !== undefined) conf.set(key as ConfigKey, value as never);
    }
    conf.validate({ allowed: "strict" });
  } catch (err) {
    throw configError(`bad configuration: ${(err as Error).message}`);
  }
  return conf.getProperties();
}

function settingNames(conf: ReturnType<typeof newConfig>): string {
  return Object.keys(conf.getProperties()).join(", ");
}
