// Parses the nvidia-persistenced-compatible command line with node:util parseArgs, after
// normalising the forms parseArgs lacks: single-dash long options (`-verbose`) and an
// option whose value may be left out (`--simulate`, `--simulate=8`, `--simulate 8`).
import { type ParseArgsConfig, parseArgs } from "node:util";
import type { Config, ConfigValues } from "../config/schema.js";
import { ExitCode } from "../exit-codes.js";
import { FatalError } from "../fatal-error.js";
import { OPTIONS } from "./options.js";

export const COMMANDS = ["run", "status", "release", "hold", "wait", "doctor", "health-check"] as const;
export type Command = (typeof COMMANDS)[number];

export interface CommandLine {
  command: Command;
  /** Arguments after the command, such as the GPU of `release GPU`. */
  operands: string[];
  help: boolean;
  version: boolean;
  json: boolean;
  configPath?: string;
  /** doctor --root: the system to examine, when not /. */
  root?: string;
  /** health-check --slurm: drain or resume this Slurm node as well. */
  slurm: boolean;
  /** wait --timeout, in seconds. */
  timeoutSeconds: number;
  /** release GPU... -- COMMAND ARGS: the command to run while the GPUs are released. */
  run: string[];
  overrides: Partial<ConfigValues>;
  /** The option each override came from, for usage errors (`logFormat` -> `--log-format`). */
  overrideOptions: Partial<Record<keyof Config, string>>;
}

/** How many operands each command takes: [least, most]. */
const OPERAND_COUNT: Record<Command, [number, number]> = {
  run: [0, 0],
  status: [0, 0],
  release: [1, Number.POSITIVE_INFINITY],
  hold: [1, Number.POSITIVE_INFINITY],
  wait: [0, 0],
  doctor: [0, 0],
  "health-check": [0, 0],
};
const DEFAULT_WAIT_SECONDS = 60;
const OPTIONAL_VALUE_FORM = /^(\d+|on|[a-z][a-z0-9-]*-[a-z0-9-]+)$/;

function usageError(message: string): FatalError {
  return new FatalError(ExitCode.USAGE, `${message}. Run 'gpu-persistd --help' for the options.`);
}

function normalise(argv: readonly string[]): string[] {
  const longNames = new Set(OPTIONS.map((o) => o.long));
  const optional = new Set(OPTIONS.filter((o) => o.optionalValue).map((o) => o.long));
  const out: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    let arg = argv[i] as string;
    if (arg === "--") {
      out.push(...argv.slice(i));
      break;
    }
    const single = /^-([a-z][a-z-]+)(=.*)?$/.exec(arg);
    if (single && longNames.has(single[1] as string)) arg = `-${arg}`;
    const name = arg.startsWith("--") ? arg.slice(2) : "";
    if (optional.has(name)) {
      const next = argv[i + 1];
      if (next !== undefined && OPTIONAL_VALUE_FORM.test(next)) {
        arg = `${arg}=${next}`;
        i++;
      } else {
        arg = `${arg}=`;
      }
    }
    out.push(arg);
  }
  return out;
}

const PARSE_OPTIONS: ParseArgsConfig["options"] = Object.fromEntries(
  OPTIONS.map((o) => [o.long, { type: o.value ? "string" : "boolean", ...(o.short ? { short: o.short } : {}) }]),
) as ParseArgsConfig["options"];

/** Parses argv (without node and script). Throws FatalError (exit 64) naming the option. */
export function parseCommandLine(fullArgv: readonly string[]): CommandLine {
  // `release GPU... -- COMMAND ARGS`: what follows the first "--" is the command, untouched.
  const dash = fullArgv.indexOf("--");
  const argv = dash < 0 ? fullArgv : fullArgv.slice(0, dash);
  const run = dash < 0 ? [] : fullArgv.slice(dash + 1);
  let parsed: ReturnType<typeof parseArgs>;
  try {
    parsed = parseArgs({ args: normalise(argv), options: PARSE_OPTIONS, allowPositionals: true, strict: true });
  } catch (err) {
    const message = (err as Error).message;
    // parseArgs names an option as '-u, --user <value>' or '--bogus': report the long form.
    const named = /'([^']+)'/.exec(message)?.[1] ?? "";
    const option = /--[\w-]+/.exec(named)?.[0] ?? named.split(" ")[0] ?? named;
    switch ((err as NodeJS.ErrnoException).code) {
      case "ERR_PARSE_ARGS_UNKNOWN_OPTION":
        throw usageError(`unrecognized option '${option}'`);
      case "ERR_PARSE_ARGS_INVALID_OPTION_VALUE":
        throw usageError(
          message.includes("does not take an argument")
            ? `option '${option}' takes no value`
            : `option '${option}' needs a value`,
        );
      default:
        throw usageError(message);
    }
  }
  const [first, ...rest] = parsed.positionals;
  const command = (first ?? "run") as Command;
  if (!COMMANDS.includes(command) || first === "run") {
    throw usageError(`unknown command '${first}' (commands: ${COMMANDS.slice(1).join(", ")})`);
  }
  const [least, most] = OPERAND_COUNT[command];
  if (rest.length < least || rest.length > most) {
    throw usageError(
      most === 0
        ? `unexpected argument '${rest[0]}'`
        : `'${command}' needs at least one GPU: an index, a UUID or a PCI bus id`,
    );
  }
  if (dash >= 0 && (command !== "release" || run.length === 0)) {
    throw usageError(
      command === "release"
        ? "'--' must be followed by the command to run"
        : "'--' is for 'release GPU... -- COMMAND' only",
    );
  }
  const overrides: Partial<ConfigValues> = {};
  const overrideOptions: Partial<Record<keyof Config, string>> = {};
  const values = parsed.values as Record<string, string | boolean | undefined>;
  // Later options win, in table order; nvidia-persistenced applies them the same way.
  for (const option of OPTIONS) {
    const value = values[option.long];
    if (value !== undefined && value !== false && option.apply) {
      const applied = option.apply(value);
      Object.assign(overrides, applied);
      for (const key of Object.keys(applied) as (keyof Config)[]) overrideOptions[key] = `--${option.long}`;
    }
  }
  const persistence = argv.filter((a) => /^--?(no-)?persistence-mode$/.test(a)).at(-1);
  if (persistence) overrides.persistenceMode = !persistence.includes("no-");
  const uvm = argv.filter((a) => /^--?(no-)?uvm-persistence-mode$/.test(a)).at(-1);
  if (uvm) overrides.uvmPersistenceMode = !uvm.includes("no-");
  const configPath = values.config as string | undefined;
  const root = values.root as string | undefined;
  if (root !== undefined && command !== "doctor") throw usageError("option '--root' is for 'doctor' only");
  if (values.slurm === true && command !== "health-check") {
    throw usageError("option '--slurm' is for 'health-check' only");
  }
  const timeout = values.timeout as string | undefined;
  if (timeout !== undefined && command !== "wait") throw usageError("option '--timeout' is for 'wait' only");
  if (timeout !== undefined && !/^\d+(\.\d+)?$/.test(timeout)) {
    throw usageError(`option '--timeout' takes a number of seconds, not '${timeout}'`);
  }
  return {
    command,
    operands: rest,
    help: values.help === true,
    version: values.version === true,
    json: values.json === true,
    slurm: values.slurm === true,
    ...(configPath !== undefined ? { configPath } : {}),
    ...(root !== undefined ? { root } : {}),
    timeoutSeconds: timeout !== undefined ? Number(timeout) : DEFAULT_WAIT_SECONDS,
    run,
    overrides,
    overrideOptions,
  };
}
