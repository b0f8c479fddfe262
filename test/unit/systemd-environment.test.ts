// What systemd hands the daemon through its environment: the watchdog interval and the
// notify socket's address, one row per return case (as go-systemd's watchdog_test.go).
import { describe, expect, it } from "vitest";
import { unixAddress } from "../../native-bindings/unix-datagram.js";
import { FatalError } from "../../src/fatal-error.js";
import { watchdogUsec } from "../../src/systemd/notify.js";

const PID = 4242;

describe("watchdogUsec", () => {
  it.each([
    ["unset", {}, null],
    ["empty", { WATCHDOG_USEC: "" }, null],
    ["set, no WATCHDOG_PID", { WATCHDOG_USEC: "30000000" }, 30_000_000],
    ["set, WATCHDOG_PID empty", { WATCHDOG_USEC: "1", WATCHDOG_PID: "" }, 1],
    ["set for this PID", { WATCHDOG_USEC: "200000", WATCHDOG_PID: String(PID) }, 200_000],
    ["set for another PID", { WATCHDOG_USEC: "200000", WATCHDOG_PID: "1" }, null],
  ])("%s: %s", (_case, env, expected) => {
    expect(watchdogUsec(env, PID)).toBe(expected);
  });

  it.each([
    ["not a number", { WATCHDOG_USEC: "abc" }, /WATCHDOG_USEC='abc' is not a positive whole number.*WatchdogSec=/],
    ["zero", { WATCHDOG_USEC: "0" }, /WATCHDOG_USEC='0'/],
    ["negative", { WATCHDOG_USEC: "-5" }, /WATCHDOG_USEC='-5'/],
    ["a fraction", { WATCHDOG_USEC: "1.5" }, /WATCHDOG_USEC='1.5'/],
    ["exponent notation", { WATCHDOG_USEC: "1e6" }, /WATCHDOG_USEC='1e6'/],
    ["padded", { WATCHDOG_USEC: " 5" }, /WATCHDOG_USEC=' 5'/],
    ["beyond a safe integer", { WATCHDOG_USEC: "9007199254740993" }, /WATCHDOG_USEC='9007199254740993'/],
    [
      "WATCHDOG_PID not a number",
      { WATCHDOG_USEC: "1", WATCHDOG_PID: "main" },
      /WATCHDOG_PID='main' is not a process id/,
    ],
  ])("%s: throws a FatalError naming the value and the fix", (_case, env, message) => {
    expect(() => watchdogUsec(env, PID)).toThrow(FatalError);
    expect(() => watchdogUsec(env, PID)).toThrow(message);
  });
});

/** sockaddr_un as the kernel reads it: family AF_UNIX (1), then the name. */
function sockaddr(name: Buffer, abstract: boolean): Buffer {
  const b = Buffer.alloc(3 + name.length);
  b.writeUInt16LE(1, 0);
  name.copy(b, abstract ? 3 : 2);
  return b;
}

describe("notify socket address", () => {
  const longest = `/${"p".repeat(106)}`;
  it.each([
    ["a path, NUL-terminated", "/run/systemd/notify", sockaddr(Buffer.from("/run/systemd/notify"), false)],
    ["an abstract name, leading NUL, none trailing", "@sd-notify", sockaddr(Buffer.from("sd-notify"), true)],
    ["the longest path (107 bytes)", longest, sockaddr(Buffer.from(longest), false)],
    ["the longest abstract name (107 bytes)", `@${"a".repeat(107)}`, sockaddr(Buffer.from("a".repeat(107)), true)],
    ["a multi-byte name, counted in bytes", "@é", sockaddr(Buffer.from("é"), true)],
  ])("%s", (_case, address, expected) => {
    expect(unixAddress(address)).toEqual(expected);
  });

  it.each([
    ["empty", ""],
    ["an empty abstract name", "@"],
    ["a path of 108 bytes", `/${"p".repeat(107)}`],
    ["an abstract name of 108 bytes", `@${"a".repeat(108)}`],
    ["a path over 107 bytes by its multi-byte characters", `/${"é".repeat(54)}`],
  ])("%s: refused, naming it", (_case, address) => {
    expect(() => unixAddress(address)).toThrow(/is empty or longer than 107 bytes/);
  });
});
