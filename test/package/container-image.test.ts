// packaging/container/Containerfile, built without a container engine (none runs on the CI
// machines): its instructions are carried out on a Debian 12 minbase tree, which is what
// debian:bookworm-slim holds, each RUN in systemd-nspawn; then the image's ENTRYPOINT and
// CMD run as Kubernetes would start them, on simulated GPUs.
import { execFileSync, spawnSync } from "node:child_process";
import { cpSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ROOT } from "../helpers/daemon.js";
import { bookwormSlimRootfs, nspawnUnavailable } from "../helpers/nspawn.js";
import { buildDeb, simulatorDeb } from "../helpers/package.js";

interface Recipe {
  from: string;
  steps: ({ copy: [string, string] } | { run: string })[];
  entrypoint: string[];
  cmd: string[];
}

/** The instructions the recipe uses; any other fails here, so this test grows with the recipe. */
function parseContainerfile(text: string): Recipe {
  const recipe: Recipe = { from: "", steps: [], entrypoint: [], cmd: [] };
  const args: Record<string, string> = {};
  const expand = (s: string) => s.replace(/\$\{(\w+)\}/g, (_, name: string) => args[name] ?? "");
  const lines = text
    .replace(/\\\n/g, " ")
    .split("\n")
    .filter((l) => l.trim() && !l.trim().startsWith("#"));
  for (const line of lines) {
    const [, instruction, rest = ""] = /^(\w+)\s+(.*)$/.exec(line.trim()) ?? [];
    switch (instruction) {
      case "FROM":
        recipe.from = rest;
        break;
      case "ARG": {
        const [name, value = ""] = rest.split("=");
        args[name as string] = value;
        break;
      }
      case "COPY": {
        const [src, dest] = expand(rest).split(/\s+/);
        recipe.steps.push({ copy: [src as string, dest as string] });
        break;
      }
      case "RUN":
        recipe.steps.push({ run: expand(rest) });
        break;
      case "ENTRYPOINT":
        recipe.entrypoint = JSON.parse(rest);
        break;
      case "CMD":
        recipe.cmd = JSON.parse(rest);
        break;
      case "STOPSIGNAL":
        expect(rest).toBe("SIGTERM");
        break;
      default:
        throw new Error(`the test does not know the instruction ${instruction}: teach parseContainerfile`);
    }
  }
  return recipe;
}

const unavailable = nspawnUnavailable();
let image = "";

function inImage(command: string, timeoutMs = 300_000) {
  return spawnSync(
    "systemd-nspawn",
    ["--quiet", "--register=no", "--keep-unit", "-D", image, "--pipe", "sh", "-c", command],
    {
      encoding: "utf8",
      timeout: timeoutMs,
      // nspawn mounts a tmpfs on /tmp; an image's /tmp is part of the image.
      env: { ...process.env, SYSTEMD_NSPAWN_TMPFS_TMP: "0" },
    },
  );
}

beforeAll(() => {
  if (unavailable) throw new Error(`cannot build the image: ${unavailable}`);
  buildDeb();
  image = mkdtempSync(join(tmpdir(), "gpu-persistd-image-"));
  execFileSync("cp", ["-a", `${bookwormSlimRootfs()}/.`, image]);
}, 300_000);

afterAll(() => {
  if (image) rmSync(image, { recursive: true, force: true });
});

describe("packaging/container/Containerfile", () => {
  const recipe = parseContainerfile(readFileSync(join(ROOT, "packaging/container/Containerfile"), "utf8"));

  it("builds on Debian 12 slim: the package installs with Debian's nodejs, no compiler", () => {
    expect(recipe.from).toBe("debian:bookworm-slim");
    for (const step of recipe.steps) {
      if ("copy" in step) {
        cpSync(join(ROOT, step.copy[0]), join(image, step.copy[1], step.copy[0].split("/").pop() as string));
      } else {
        const result = inImage(step.run);
        expect(result.status, `RUN ${step.run}\n${result.stdout}${result.stderr}`).toBe(0);
      }
    }
    expect(inImage("getent passwd nvidia-persistenced").status).toBe(0);
    // No service manager in the image: the standalone sysusers satisfies the package.
    expect(inImage("command -v systemctl").stdout).toBe("");
    expect(inImage("command -v cc gcc").stdout).toBe("");
  });

  it("starts from ENTRYPOINT and CMD, holds the GPUs, answers the readiness probe, stops on SIGTERM", () => {
    // Simulated GPUs need the simulator's package, which the production image leaves out.
    const deb = simulatorDeb().split("/").pop() as string;
    cpSync(join(ROOT, "dist", simulatorDeb()), join(image, "tmp", deb));
    const sim = inImage(`dpkg -i /tmp/${deb} && rm /tmp/${deb}`);
    expect(sim.status, sim.stdout + sim.stderr).toBe(0);
    const command = [...recipe.entrypoint, ...recipe.cmd, "--simulate=2"].join(" ");
    const result = inImage(
      [
        `${command} >/tmp/log 2>&1 & pid=$!`,
        "for i in $(seq 100); do grep -q '\"ready: ' /tmp/log && break; sleep 0.1; done",
        "gpu-persistd status; gpu-persistd wait --timeout=4; echo probe=$?",
        "kill -TERM $pid; wait $pid; echo exit=$?; cat /tmp/log",
      ].join("\n"),
      60_000,
    );
    expect(result.stdout).toContain("2/2 GPUs held (simulated GPUs)");
    expect(result.stdout).toContain("probe=0");
    expect(result.stdout).toContain("exit=0");
    const logs = result.stdout
      .split("\n")
      .filter((l) => l.startsWith("{"))
      .map((l) => JSON.parse(l) as { msg: string });
    const uid = inImage("id -u nvidia-persistenced").stdout.trim();
    expect(logs.map((l) => l.msg)).toContain(
      `now running as user nvidia-persistenced (${uid}), group of the user (${uid})`,
    );
    expect(logs.at(-1)?.msg).toMatch(/^Shutdown \(\d+\)$/);
  });
});
