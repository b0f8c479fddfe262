// packaging/kubernetes/: schema-valid against the Kubernetes API types (offline), and the
// DaemonSet has what a GPU node needs: GPU nodes only, /dev and the runtime directory from
// the host, a readiness probe through `gpu-persistd status`, the image of this version.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import type { DaemonSet } from "kubernetes-types/apps/v1.js";
import { describe, expect, it } from "vitest";
import { parseAllDocuments } from "yaml";
import { ROOT } from "../helpers/daemon.js";
import { schemaErrors } from "../helpers/kubernetes-schema.js";
import { VERSION } from "../helpers/package.js";

const MANIFEST = join(ROOT, "packaging/kubernetes/gpu-persistd.yaml");

function documents(text: string): { apiVersion?: unknown; kind?: unknown }[] {
  return parseAllDocuments(text).map((doc) => {
    if (doc.errors.length) throw new Error(doc.errors.map((e) => e.message).join("\n"));
    return doc.toJS();
  });
}

const docs = documents(readFileSync(MANIFEST, "utf8"));
const daemonSet = docs.find((d) => d.kind === "DaemonSet") as DaemonSet;
const pod = daemonSet.spec?.template.spec;
const container = pod?.containers[0];

describe("Kubernetes manifests", () => {
  it("match the Kubernetes API schema", () => {
    expect(schemaErrors(docs)).toBe("");
  });

  it("the check catches a misspelt field, a wrong type and a missing required field", () => {
    type Loose = {
      spec: { template: { spec: { volumes: object[]; containers: { image: unknown }[] } }; selector?: unknown };
    };
    const misspelt = structuredClone(daemonSet) as unknown as Loose;
    misspelt.spec.template.spec.volumes[0] = { name: "dev", hostpath: { path: "/dev" } };
    expect(schemaErrors([misspelt as never])).toContain(`'"hostpath"' does not exist in type 'Volume'`);
    const mistyped = structuredClone(daemonSet) as unknown as Loose;
    (mistyped.spec.template.spec.containers[0] as { image: unknown }).image = 7;
    expect(schemaErrors([mistyped as never])).toContain("Type 'number' is not assignable to type 'string'");
    const incomplete = structuredClone(daemonSet) as unknown as Loose;
    delete incomplete.spec.selector;
    expect(schemaErrors([incomplete as never])).toContain("Property 'selector' is missing");
  });

  it("runs on GPU nodes only, privileged, with the host's /dev and runtime directory", () => {
    expect(pod?.nodeSelector).toEqual({ "nvidia.com/gpu.present": "true" });
    expect(container?.securityContext?.privileged).toBe(true);
    const mounts = Object.fromEntries((container?.volumeMounts ?? []).map((m) => [m.name, m.mountPath]));
    const hostPaths = Object.fromEntries((pod?.volumes ?? []).map((v) => [v.name, v.hostPath?.path]));
    expect(hostPaths.dev).toBe("/dev");
    expect(mounts.dev).toBe("/dev");
    expect(hostPaths.runtime).toBe("/run/nvidia-persistenced");
    expect(mounts.runtime).toBe("/run/nvidia-persistenced");
  });

  it("is ready when `gpu-persistd wait` says every GPU is held, and runs this version's image", () => {
    expect(container?.readinessProbe?.exec?.command).toEqual(["gpu-persistd", "wait", "--timeout=4"]);
    expect(container?.image).toBe(`gpu-persistd:${VERSION}`);
    const containerfile = readFileSync(join(ROOT, "packaging/container/Containerfile"), "utf8");
    expect(containerfile).toContain(`ARG VERSION=${VERSION}\n`);
  });
});
