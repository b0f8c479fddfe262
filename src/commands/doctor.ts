import { hardExit } from "../../native-bindings/libc.js";
import type { CommandLine } from "../cli/command-line.js";
import { formatReport, runDoctor } from "../doctor/doctor.js";
import { STUCK_CHECK } from "../doctor/nvml-checks.js";
import { ExitCode } from "../exit-codes.js";

/** `gpu-persistd doctor [--json] [--root DIR]`: exit 0 when every check passes, 1 when not. */
export async function doctorCommand(commandLine: CommandLine): Promise<void> {
  const report = await runDoctor(commandLine, process.env);
  const code = report.ok ? ExitCode.OK : ExitCode.FAILURE;
  await new Promise<void>((resolve) =>
    process.stdout.write(commandLine.json ? `${JSON.stringify(report)}\n` : formatReport(report), () => resolve()),
  );
  // A thread stuck in the driver would keep the process from exiting: leave without it.
  if (report.checks.some((c) => c.id === STUCK_CHECK)) hardExit(code);
  process.exitCode = code;
}
