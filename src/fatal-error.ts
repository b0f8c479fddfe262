import type { ExitCode } from "./exit-codes.js";

/** An error that ends the process with a given exit code; its message says cause and fix. */
export class FatalError extends Error {
  readonly exitCode: ExitCode;
  constructor(exitCode: ExitCode, message: string) {
    super(message);
    this.name = "FatalError";
    this.exitCode = exitCode;
  }
}
