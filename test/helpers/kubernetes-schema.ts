// An offline schema check for Kubernetes manifests: each document becomes a typed constant
// of kubernetes-types (generated from the Kubernetes OpenAPI schema), and tsc checks it.
// Object literals get TypeScript's excess-property check, so a misspelt or misplaced field
// fails like a missing required one or a wrong type. No cluster or network needed.
import { spawnSync } from "node:child_process";
import { mkdirSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { ROOT } from "./daemon.js";

/** apiVersion and kind -> the kubernetes-types module and type. */
const TYPES: Record<string, [string, string]> = {
  "v1/Namespace": ["kubernetes-types/core/v1.js", "Namespace"],
  "v1/ServiceAccount": ["kubernetes-types/core/v1.js", "ServiceAccount"],
  "v1/ConfigMap": ["kubernetes-types/core/v1.js", "ConfigMap"],
  "apps/v1/DaemonSet": ["kubernetes-types/apps/v1.js", "DaemonSet"],
};

/** tsc's diagnostics for `docs` (empty when every document matches its schema). */
export function schemaErrors(docs: { apiVersion?: unknown; kind?: unknown }[]): string {
  const dir = join(ROOT, ".ci-cache", `k8s-check-${process.pid}`);
  mkdirSync(dir, { recursive: true });
  try {
    const lines: string[] = [];
    docs.forEach((doc, i) => {
      const key = `${doc.apiVersion}/${doc.kind}`;
      const type = TYPES[key];
      if (!type) throw new Error(`no schema for ${key} (document ${i}): add it to test/helpers/kubernetes-schema.ts`);
      lines.push(`import type { ${type[1]} as T${i} } from "${type[0]}";`);
      lines.push(`export const doc${i}: T${i} = ${JSON.stringify(doc, null, 2)};`);
    });
    writeFileSync(join(dir, "manifests.ts"), `${lines.join("\n")}\n`);
    const compilerOptions = { noEmit: true, strict: true, module: "nodenext", moduleResolution: "nodenext", types: [] };
    writeFileSync(join(dir, "tsconfig.json"), JSON.stringify({ compilerOptions, files: ["manifests.ts"] }));
    const tsc = spawnSync(join(ROOT, "node_modules/.bin/tsc"), ["-p", dir], { cwd: ROOT, encoding: "utf8" });
    if (tsc.error) throw tsc.error;
    return tsc.status === 0 ? "" : `${tsc.stdout}${tsc.stderr}`;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
