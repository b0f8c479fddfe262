// `gpu-persistd doctor`: every check that explains why GPUs are not kept initialised, with
// the exact fix, on this host or on a system laid out under --root. It reads only: the one
// NVML session it opens changes no GPU setting.
import { existsSync } from "node:fs";
import { type CommandLine, parseCommandLine } from "../cli/command-line.js";
import { type ConfigSource, configFile, loadConfig } from "../config/load-config.js";
import { type Config, type ConfigValues, DEFAULT_CONFIG_PATH, newConfig, parsedConfig } from "../config/schema.js";
import { requestStatus } from "../control/control-client.js";
import type { DaemonStatus } from "../status/daemon-status.js";
import { UNIT_NAME } from "../systemd/unit-name.js";
import { type Check, fail, pass } from "./check.js";
import { persistenceCostCheck, recoveryCheck } from "./cost-checks.js";
import { deviceNodeChecks, kernelModuleCheck, numaCheck } from "./driver-checks.js";
import { HostRoot } from "./host-root.js";
import { metricsChecks } from "./metrics-checks.js";
import { nvmlChecks } from "./nvml-checks.js";
import { accountCheck, persistencedCheck, runtimeChecks, unitCheck } from "./service-checks.js";

export interface DoctorReport {
  ok: boolean;
  root: string;
  checks: Check[];
}

/** The options of the unit's last ExecStart= (file, then drop-ins), or why they cannot be read. */
function unitOptions(host: HostRoot): { overrides: Partial<ConfigValues>; from: string; error?: string } {
  const last = host.unitDirective(UNIT_NAME, "ExecStart").at(-1);
  const execStart = last?.value ?? "";
  const from = last?.source ?? "";
  if (!execStart) return { overrides: {}, from: "" };
  // Prefixes such as "-" or "+" change how systemd runs the command, not its arguments.
  const argv = execStart
    .replace(/^[-@:+!]+/, "")
    .split(/\s+/)
    .slice(1);
  try {
    return { overrides: parseCommandLine(argv).overrides, from };
  } catch (err) {
    return { overrides: {}, from, error: `ExecStart in ${from}: ${(err as Error).message}` };
  }
}

function configuration(
  host: HostRoot,
  commandLine: CommandLine,
  env: NodeJS.ProcessEnv,
): { config: Config; check: Check } {
  const title = "configuration";
  const unit = unitOptions(host);
  const source: ConfigSource = {
    ...(commandLine.configPath !== undefined ? { path: commandLine.configPath } : {}),
    defaultPath: host.path(DEFAULT_CONFIG_PATH),
    overrides: { ...unit.overrides, ...commandLine.overrides },
  };
  const { path } = configFile(source, env);
  if (unit.error) {
    return {
      config: parsedConfig(newConfig().getProperties()),
      check: fail("config", title, unit.error, `systemctl edit --full ${UNIT_NAME}, and fix ExecStart`),
    };
  }
  try {
    const config = loadConfig(source, env);
    const options = Object.keys(unit.overrides).length ? `, with the options of ${unit.from}` : "";
    const present = existsSync(path) ? path : `${path} absent: the defaults`;
    return { config, check: pass("config", title, `${present}${options}`) };
  } catch (err) {
    return {
      config: parsedConfig(newConfig().getProperties()),
      check: fail("config", title, (err as Error).message, `correct ${path}, then: systemctl reload gpu-persistd`),
    };
  }
}

export async function runDoctor(commandLine: CommandLine, env: NodeJS.ProcessEnv): Promise<DoctorReport> {
  const host = new HostRoot(commandLine.root ?? "/");
  const { config, check: configCheck } = configuration(host, commandLine, env);
  let daemon: DaemonStatus | null = null;
  let daemonError = "";
  try {
    daemon = await requestStatus(host.path(config.runtimeDir), 3000);
  } catch (err) {
    daemonError = (err as Error).message;
  }
  const { check: account, account: user } = accountCheck(host, config);
  const checks = [
    configCheck,
    kernelModuleCheck(host),
    ...deviceNodeChecks(host, user),
    persistencedCheck(host),
    unitCheck(host),
    account,
    ...metricsChecks(host, config, user),
    ...runtimeChecks(host, config, daemon, daemonError),
    numaCheck(host, daemon),
    ...(await nvmlChecks(host, config, env, daemon)),
    recoveryCheck(daemon),
    persistenceCostCheck(daemon),
  ];
  return { ok: checks.every((c) => c.ok), root: host.root, checks };
}

export function formatReport(report: DoctorReport): string {
  const width = Math.max(...report.checks.map((c) => c.title.length));
  const lines = report.checks.flatMap((c) => [
    `${c.ok ? "PASS" : "FAIL"}  ${c.title.padEnd(width)}  ${c.detail}`,
    ...(c.fix ? [`      ${" ".repeat(width)}  fix: ${c.fix}`] : []),
  ]);
  const failed = report.checks.filter((c) => !c.ok).length;
  const where = report.root === "/" ? "" : ` (system under ${report.root})`;
  lines.push(
    "",
    failed
      ? `gpu-persistd doctor: ${failed} of ${report.checks.length} checks failed${where}.`
      : `gpu-persistd doctor: all ${report.checks.length} checks passed${where}.`,
  );
  return `${lines.join("\n")}\n`;
}
