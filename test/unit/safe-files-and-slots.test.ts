// Pure helpers of the hardening: files never reached through a link, connection slots per
// uid with a reserve, client text made safe for a log line.
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { clientText } from "../../src/connections/client-text.js";
import { ConnectionSlots } from "../../src/connections/connection-slots.js";
import {
  claimDirectory,
  createExclusive,
  openOwnedFile,
  openRegularFile,
  UnsafePathError,
} from "../../src/safe-files.js";

const dir = mkdtempSync(join(tmpdir(), "gpu-persistd-safe-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe("safe files", () => {
  it("never writes through a link planted where a new file goes", () => {
    const victim = join(dir, "victim");
    writeFileSync(victim, "keep");
    symlinkSync(victim, join(dir, "planted"));
    expect(() => createExclusive(join(dir, "planted"), 0o644)).toThrow(/EEXIST/);
    expect(() => openOwnedFile(join(dir, "planted"), 0o644)).toThrow(UnsafePathError);
    expect(readFileSync(victim, "utf8")).toBe("keep");
  });

  it("refuses a directory that is a link or that others may write, and creates a missing one", () => {
    const real = join(dir, "real");
    mkdirSync(real);
    symlinkSync(real, join(dir, "link"));
    expect(() => claimDirectory(join(dir, "link"), 0o755)).toThrow(/is a symbolic link/);
    chmodSync(real, 0o777);
    expect(() => claimDirectory(real, 0o755)).toThrow(/writable by other users \(mode 777\)/);
    expect(claimDirectory(join(dir, "fresh"), 0o755)).toBe(true);
    expect(claimDirectory(join(dir, "fresh"), 0o755)).toBe(false);
  });

  it("reads only regular files", () => {
    expect(() => openRegularFile("/dev/zero")).toThrow("/dev/zero is not a regular file");
    expect(() => openRegularFile(dir)).toThrow("is not a regular file");
  });
});

describe("connection slots", () => {
  it("caps each unprivileged uid, keeps the reserve for root, and gives slots back once", () => {
    const slots = new ConnectionSlots({ total: 6, perUid: 2, reserve: 2 });
    const a1 = slots.take(1000);
    expect(typeof a1).toBe("function");
    expect(typeof slots.take(1000)).toBe("function");
    expect(slots.take(1000)).toBe("uid 1000 already has 2 connections open (at most 2)");
    expect(typeof slots.take(1001)).toBe("function");
    expect(typeof slots.take(1001)).toBe("function");
    expect(slots.take(1002)).toBe("the last 2 of 6 connections are kept for root");
    expect(typeof slots.take(0)).toBe("function");
    expect(typeof slots.take(0)).toBe("function");
    expect(slots.take(0)).toBe("all 6 connections are in use");
    if (typeof a1 !== "function") throw new Error("no slot");
    a1();
    a1();
    expect(slots.open).toBe(5);
    expect(slots.take(1002)).toBe("the last 2 of 6 connections are kept for root");
  });
});

describe("client text in a log line", () => {
  it("is quoted, escaped and cut short", () => {
    expect(clientText("x\nFATAL forged")).toBe('"x\\nFATAL forged"');
    expect(clientText("\u001b[31mred\u0085")).toBe('"\\u001b[31mred\\u0085"');
    expect(clientText("y".repeat(100))).toBe(`"${"y".repeat(64)}..."`);
  });
});
