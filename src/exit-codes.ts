/** Exit codes, from sysexits.h where one fits. */
export const ExitCode = {
  OK: 0,
  FAILURE: 1,
  USAGE: 64,
  NO_USER: 67,
  UNAVAILABLE: 69,
  NO_PERMISSION: 77,
  CONFIG: 78,
} as const;
export type ExitCode = (typeof ExitCode)[keyof typeof ExitCode];
