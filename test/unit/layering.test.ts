// Which modules may import which, read from the sources' import statements; and the shape
// rules that keep the layout readable (file length, the one writer of GPU holds).
import { readdirSync, readFileSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import { describe, expect, it } from "vitest";

const ROOT = resolve(import.meta.dirname, "../..");

/** The repository-relative files `file` imports (relative imports only; packages are left out). */
function imports(file: string): string[] {
  const text = readFileSync(join(ROOT, file), "utf8");
  return [...text.matchAll(/^\s*(?:import|export)\b[^;]*?\bfrom\s+"(\.[^"]+)"/gms)].map((m) =>
    relative(ROOT, resolve(ROOT, dirname(file), m[1] as string)).replace(/\.js$/, ".ts"),
  );
}

function sources(dir: string): string[] {
  return readdirSync(join(ROOT, dir), { recursive: true, encoding: "utf8" })
    .filter((name) => name.endsWith(".ts"))
    .map((name) => join(dir, name));
}

describe("layering", () => {
  it("reads imports as written (the check itself works)", () => {
    expect(imports("src/gpu/gpu-log-fields.ts")).toEqual(["src/selection/pci-address.ts"]);
  });

  it("nothing under src/config/ imports from src/gpu/ or src/metrics/", () => {
    const crossings = sources("src/config").flatMap((file) =>
      imports(file)
        .filter((target) => target.startsWith("src/gpu/") || target.startsWith("src/metrics/"))
        .map((target) => `${file} -> ${target}`),
    );
    expect(crossings).toEqual([]);
  });

  it("src/log.ts knows nothing about GPUs", () => {
    expect(imports("src/log.ts").filter((f) => f.startsWith("src/gpu/") || /gpu/i.test(f))).toEqual([]);
  });

  it("no import circle in src/ (type-only imports included): each module reads in one direction", () => {
    const files = sources("src");
    const graph = new Map(files.map((f) => [f, imports(f).filter((t) => files.includes(t))]));
    const circles: string[] = [];
    const state = new Map<string, "open" | "done">();
    const path: string[] = [];
    const visit = (file: string): void => {
      state.set(file, "open");
      path.push(file);
      for (const next of graph.get(file) ?? []) {
        if (state.get(next) === "open") circles.push([...path.slice(path.indexOf(next)), next].join(" -> "));
        else if (!state.has(next)) visit(next);
      }
      path.pop();
      state.set(file, "done");
    };
    for (const file of files) if (!state.has(file)) visit(file);
    expect(circles).toEqual([]);
  });

  it("no source file over 350 lines: each reads in one sitting", () => {
    const long = [...sources("src"), ...sources("native-bindings")].flatMap((file) => {
      const lines = readFileSync(join(ROOT, file), "utf8").split("\n").length - 1;
      return lines > 350 ? [`${file}: ${lines} lines`] : [];
    });
    expect(long).toEqual([]);
  });

  it("only the reconciler converges a GPU: adapters change intents and await it", () => {
    const callers = [...sources("src"), ...sources("native-bindings")].filter((file) =>
      /\.converge\(/.test(readFileSync(join(ROOT, file), "utf8")),
    );
    expect(callers).toEqual(["src/gpu/reconciler.ts"]);
  });
});
