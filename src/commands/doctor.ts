import type { CommandLine } from "../cli/command-line.js";
import { formatReport, runDoctor } from "../doctor/doctor.js";
import { ExitCode } from "../exit-codes.js";

/** `gpu-persistd doctor [--json] [--root DIR]`: exit 0 when every check passes, 1 when not. */
export async function doctorCommand(commandLine: CommandLine): Promise<void> {
  const report = await runDoctor(commandLine, process.env);
  process.stdout.write(commandLine.json ? `${JSON.stringify(report)}\n` : formatReport(report));
  process.exitCode = report.ok ? ExitCode.OK : ExitCode.FAILURE;
}
