// Writes the metrics for node_exporter's textfile collector: the whole file replaced at
// once (a temporary file renamed over it), so a scrape never reads half of it.
import { randomBytes } from "node:crypto";
import { closeSync, fchmodSync, renameSync, rmSync, writeSync } from "node:fs";
import { basename, dirname, join } from "node:path";
import { ExitCode } from "../exit-codes.js";
import { FatalError } from "../fatal-error.js";
import type { Log } from "../log.js";
import { createExclusive } from "../safe-files.js";
import { grantWrite, INSTALL_NODE_EXPORTER, installDropIn } from "./metrics-fixes.js";

const UNIT_HINT =
  "the default gpu-persistd.service may write only its runtime directory (ProtectSystem=strict); " +
  `allow it (ReadWritePaths=): ${installDropIn("metrics-textfile.conf")}`;

export class MetricsTextfile {
  readonly #path: string;
  readonly #temporary: string;
  readonly #render: () => string;
  readonly #log: Log;
  /** The daemon's user after the drop, for the fix when it may not write the directory. */
  readonly #user: string;
  #failing = false;
  /** The text of the file in place, so an unchanged one is not rewritten. */
  #written: string | null = null;

  constructor(path: string, render: () => string, log: Log, user: string) {
    this.#path = path;
    // node_exporter reads *.prom only: the temporary name is never collected.
    this.#temporary = join(dirname(path), `.${basename(path)}.${process.pid}.tmp`);
    this.#render = render;
    this.#log = log;
    this.#user = user;
  }

  /** Writes once, throwing a FatalError that says the fix if it cannot. */
  open(): void {
    try {
      this.#write();
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      const why =
        e.code === "EROFS"
          ? `${e.code}: ${UNIT_HINT}`
          : e.code === "EACCES" || e.code === "EPERM"
            ? `${e.code}: the directory must be writable by ${this.#user}: ${grantWrite(this.#user, dirname(this.#path))}`
            : e.code === "ENOENT"
              ? `the directory ${dirname(this.#path)} does not exist (node_exporter's textfile directory): ${INSTALL_NODE_EXPORTER}`
              : e.message;
      throw new FatalError(ExitCode.CONFIG, `cannot write metrics to ${this.#path}: ${why}`);
    }
  }

  /** A last write (the state at stop: nothing held), then no more. */
  stop(): void {
    this.writeNow();
  }

  #write(): void {
    const text = this.#render();
    // Unchanged metrics need no new file: no disk write, no directory entry churn.
    if (text === this.#written) return;
    // A new file each time, never one someone placed there: the directory may be shared.
    const temporary = `${this.#temporary}.${randomBytes(6).toString("hex")}`;
    const fd = createExclusive(temporary, 0o644);
    try {
      try {
        writeSync(fd, text);
        // node_exporter runs as its own user; the unit's UMask=0077 would hide the file from it.
        fchmodSync(fd, 0o644);
      } finally {
        // Exactly once: a second close could hit an fd another thread has just been given.
        closeSync(fd);
      }
      renameSync(temporary, this.#path);
    } catch (err) {
      rmSync(temporary, { force: true });
      throw err;
    }
    this.#written = text;
  }

  /**
   * Writes the metrics if they changed. Failures are logged once until a write succeeds
   * again; the daemon keeps its GPUs.
   */
  writeNow(): void {
    try {
      this.#write();
      if (this.#failing) this.#log.info(`metrics: writing ${this.#path} works again`);
      this.#failing = false;
    } catch (err) {
      if (!this.#failing) this.#log.warn(`metrics: cannot write ${this.#path}: ${(err as Error).message}`);
      this.#failing = true;
    }
  }
}
