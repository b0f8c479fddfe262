// Entry point of the bundle: parse the command line, load the configuration, then run the
// daemon or a client command. Every failure ends with its exit code and a message that
// says the cause and the fix.
import { fstatSync } from "node:fs";
import { hardExit } from "../native-bindings/libc.js";
import { parseCommandLine } from "./cli/command-line.js";
import { helpText, versionText } from "./cli/help.js";
import { doctorCommand } from "./commands/doctor.js";
import { healthCheckCommand } from "./commands/health-check.js";
import { releaseAroundCommand } from "./commands/release-around.js";
import { setPersistenceCommand } from "./commands/set-persistence.js";
import { statusCommand } from "./commands/status.js";
import { waitCommand } from "./commands/wait.js";
import { type ConfigSource, loadConfig, loadConfigWithNotes } from "./config/load-config.js";
import type { Config } from "./config/schema.js";
import { letWaitingClientsGo } from "./connections/waiting-clients.js";
import { Daemon } from "./daemon/daemon.js";
import { ExitCode } from "./exit-codes.js";
import { FatalError } from "./fatal-error.js";
import { ensureLibuvEnvironment } from "./libuv-environment.js";
import { createLog, type Log, resolveLogFormat, stdoutIsJournal } from "./log.js";
import { RuntimeDir } from "./runtime-dir.js";
import { JournalSender } from "./systemd/journal.js";
import { passedFds } from "./systemd/listen-fds.js";
import { SystemdNotifier } from "./systemd/notify.js";
import { STOP_SIGNALS } from "./systemd/stop-kind.js";

function fail(err: unknown): never {
  const fatal = err instanceof FatalError ? err : null;
  process.stderr.write(`gpu-persistd: ${fatal ? fatal.message : ((err as Error).stack ?? String(err))}\n`);
  process.exit(fatal ? fatal.exitCode : ExitCode.FAILURE);
}

function stdoutStat(): { dev: number; ino: number } | undefined {
  try {
    return fstatSync(1);
  } catch {
    return undefined;
  }
}

async function runDaemon(config: Config, source: ConfigSource, notes: string[]): Promise<void> {
  ensureLibuvEnvironment();
  const format = resolveLogFormat(config.logFormat, stdoutIsJournal(process.env, stdoutStat()));
  const journal = format === "journal" ? new JournalSender(process.env.GPU_PERSISTD_JOURNAL_SOCKET) : undefined;
  const log: Log = createLog(config.logLevel, format, journal);
  const notifier = new SystemdNotifier(process.env, (err) => log.warn(`sd_notify: ${err.message}`));
  for (const note of notes) log.warn(note);
  const runtime = RuntimeDir.claim(config.runtimeDir);
  const daemon = new Daemon(config, {
    log,
    runtime,
    notifier,
    env: process.env,
    reloadConfig: () => loadConfig(source),
    setLogLevel: (level) => {
      log.level = level;
    },
    exit: hardExit,
  });
  for (const [signal, kind] of Object.entries(STOP_SIGNALS)) {
    process.on(signal, () => void daemon.stop(ExitCode.OK, `received ${signal}`, kind));
  }
  process.on("SIGHUP", () => daemon.reload());
  await daemon.run();
}

async function main(argv: readonly string[]): Promise<void> {
  const commandLine = parseCommandLine(argv);
  if (commandLine.help) {
    process.stdout.write(helpText());
    return;
  }
  if (commandLine.version) {
    process.stdout.write(versionText());
    return;
  }
  // doctor reads the configuration itself: a broken one is a finding, not an exit.
  if (commandLine.command === "doctor") return doctorCommand(commandLine);
  const source: ConfigSource = {
    ...(commandLine.configPath !== undefined ? { path: commandLine.configPath } : {}),
    overrides: commandLine.overrides,
    overrideOptions: commandLine.overrideOptions,
  };
  let loaded: ReturnType<typeof loadConfigWithNotes>;
  try {
    loaded = loadConfigWithNotes(source);
  } catch (err) {
    // A socket unit's clients would wait for a daemon that is not coming (bad configuration).
    if (commandLine.command === "run") letWaitingClientsGo(passedFds(process.env));
    throw err;
  }
  const { config, notes } = loaded;
  switch (commandLine.command) {
    case "run":
      return runDaemon(config, source, notes);
    case "status":
      return statusCommand(config.runtimeDir, commandLine.json);
    case "wait":
      return waitCommand(config.runtimeDir, commandLine.timeoutSeconds);
    case "health-check":
      return healthCheckCommand({
        runtimeDir: config.runtimeDir,
        drainReleased: config.healthCheckDrainReleased,
        slurm: commandLine.slurm,
      });
    case "release":
      if (commandLine.run.length > 0)
        return releaseAroundCommand(config.runtimeDir, commandLine.operands, commandLine.run);
      return setPersistenceCommand(config.runtimeDir, commandLine.operands, false);
    case "hold":
      return setPersistenceCommand(config.runtimeDir, commandLine.operands, true);
  }
}

main(process.argv.slice(2)).catch((err: unknown) => {
  fail(err);
});
