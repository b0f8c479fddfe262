// COMMAND of `release GPU... -- COMMAND` as a shell would show and report it: the words
// quoted so that they can be pasted back, and the exit code and reason a shell gives when a
// command cannot be run (127 not found, 126 found but not executable).

const PLAIN = /^[A-Za-z0-9_@%+=:,./-]+$/;

/** One word as a POSIX shell reads it back: plain words as they are, the rest single-quoted. */
export function shellQuote(word: string): string {
  return PLAIN.test(word) ? word : `'${word.replaceAll("'", `'\\''`)}'`;
}

export function shellCommandLine(words: readonly string[]): string {
  return words.map(shellQuote).join(" ");
}

/** The exit code and message a shell gives when `name` cannot be run (spawn's error). */
export function cannotRun(
  name: string,
  { code, message }: { code?: string | undefined; message: string },
): { exitCode: number; reason: string } {
  // A name without a slash is looked up in PATH, as the shell does.
  if (code === "ENOENT") {
    return { exitCode: 127, reason: name.includes("/") ? "No such file or directory" : "command not found" };
  }
  if (code === "EACCES") return { exitCode: 126, reason: "Permission denied" };
  if (code === "ENOEXEC") return { exitCode: 126, reason: "Exec format error" };
  if (code === "EISDIR") return { exitCode: 126, reason: "Is a directory" };
  return { exitCode: 126, reason: message };
}
