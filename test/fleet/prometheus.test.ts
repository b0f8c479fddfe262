// The metrics and the shipped alert rules against a real Prometheus 2.42 and node_exporter
// 1.5 (Debian 12's), in one container under real systemd, with gpu-persistd installed from
// its .deb on simulated GPUs and both example drop-ins: Prometheus scrapes the listener,
// node_exporter reads the textfile; after an injected Xid 79 the query API returns the lost
// GPU with its labels from both, and the shipped alerts fire once their `for:` has passed
// (shortened in the test's copy of the rules, as are the intervals).
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { ROOT } from "../helpers/daemon.js";
import { fleetRootfs } from "../helpers/nspawn.js";
import { packageHost, SIM_CONFIG, simulateInUnit } from "../helpers/package.js";

// The container shares the host's network: ports no stock service uses.
const METRICS = "127.0.0.1:19400";
const PROMETHEUS = "127.0.0.1:19090";
const NODE_EXPORTER = "127.0.0.1:19100";
const TEXTFILE_DIR = "/var/lib/prometheus/node-exporter";
const EXAMPLES = "/usr/share/doc/gpu-persistd/examples";
const FOR = "3s";

const host = packageHost(fleetRootfs);
const run = (command: string, timeoutMs?: number) => host.container.check(command, timeoutMs);
const quote = (s: string) => `'${s.replaceAll("'", "'\\''")}'`;

interface Sample {
  metric: Record<string, string>;
  value: [number, string];
}
interface Alert {
  labels: Record<string, string>;
  state: string;
}

function query(promql: string): Sample[] {
  const reply = JSON.parse(run(`curl -sf http://${PROMETHEUS}/api/v1/query --data-urlencode query=${quote(promql)}`));
  expect(reply.status).toBe("success");
  return reply.data.result as Sample[];
}

const alerts = (): Alert[] => JSON.parse(run(`curl -sf http://${PROMETHEUS}/api/v1/alerts`)).data.alerts;

async function until<T>(what: string, get: () => T | undefined, limitMs: number): Promise<T> {
  const start = Date.now();
  for (;;) {
    let value: T | undefined;
    try {
      value = get();
    } catch {
      value = undefined; // Prometheus still starting
    }
    if (value !== undefined) return value;
    if (Date.now() - start > limitMs) {
      throw new Error(
        `${what}: not within ${limitMs} ms\n${host.container.run(`curl -s http://${PROMETHEUS}/api/v1/alerts; journalctl -q -n 20 -u fleet-prometheus -u gpu-persistd`).stdout}`,
      );
    }
    await new Promise((r) => setTimeout(r, 500));
  }
}

function simulate(xid79?: { gpu: number; afterMs: number }): void {
  host.container.writeFile(
    SIM_CONFIG,
    JSON.stringify({
      statePath: "/run/nvidia-persistenced/sim-state",
      events: xid79 ? [{ gpu: xid79.gpu, type: 8, data: 79, afterMs: xid79.afterMs }] : [],
    }),
  );
}

describe("Prometheus and node_exporter", () => {
  it("scrape the listener and read the textfile, as the operations guide sets them up", async () => {
    run(`dpkg -i ${host.withSimulator}`, 120_000);
    // The guide's steps: both example drop-ins, the textfile directory writable by the daemon's user.
    run(
      `install -D -m 0644 ${EXAMPLES}/metrics-listen.conf /etc/systemd/system/gpu-persistd.service.d/metrics-listen.conf && ` +
        `install -D -m 0644 ${EXAMPLES}/metrics-textfile.conf /etc/systemd/system/gpu-persistd.service.d/metrics-textfile.conf && ` +
        `chgrp nvidia-persistenced ${TEXTFILE_DIR} && chmod g+w ${TEXTFILE_DIR}`,
    );
    simulateInUnit(
      host.container,
      4,
      `--metrics-listen=${METRICS} --metrics-textfile=${TEXTFILE_DIR}/gpu-persistd.prom`,
    );
    simulate();
    // The textfile is rewritten every health interval: 1 s here, so the test waits little.
    host.container.writeFile(
      "/run/systemd/system/gpu-persistd.service.d/health-interval.conf",
      "[Service]\nEnvironment=GPU_PERSISTD_HEALTH_INTERVAL_MS=1000\n",
    );
    run("systemctl daemon-reload && systemctl start gpu-persistd");

    // The shipped rules, with every `for:` shortened; intervals of a second.
    const rules = readFileSync(join(ROOT, "packaging/prometheus/gpu-persistd.rules.yml"), "utf8");
    expect(run(`cat ${EXAMPLES}/gpu-persistd.rules.yml`)).toBe(rules);
    host.container.writeFile("/etc/prometheus/fleet/gpu-persistd.rules.yml", rules.replace(/for: \S+/g, `for: ${FOR}`));
    host.container.writeFile(
      "/etc/prometheus/fleet/prometheus.yml",
      [
        "global: { scrape_interval: 1s, evaluation_interval: 1s }",
        "rule_files: [/etc/prometheus/fleet/gpu-persistd.rules.yml]",
        "scrape_configs:",
        `  - { job_name: gpu-persistd, static_configs: [{ targets: ["${METRICS}"] }] }`,
        `  - { job_name: node, static_configs: [{ targets: ["${NODE_EXPORTER}"] }] }`,
        "",
      ].join("\n"),
    );
    run("promtool check config /etc/prometheus/fleet/prometheus.yml");
    run(
      `systemd-run --unit=fleet-node-exporter -p User=prometheus /usr/bin/prometheus-node-exporter --web.listen-address=${NODE_EXPORTER} ` +
        `--collector.disable-defaults --collector.textfile --collector.textfile.directory=${TEXTFILE_DIR}`,
    );
    run(
      `systemd-run --unit=fleet-prometheus -p User=prometheus /usr/bin/prometheus --config.file=/etc/prometheus/fleet/prometheus.yml ` +
        `--storage.tsdb.path=/var/lib/prometheus/fleet --web.listen-address=${PROMETHEUS}`,
    );
    for (const job of ["gpu-persistd", "node"]) {
      await until(
        `4 GPUs held, seen through job ${job}`,
        () => (query(`count(gpu_persistd_gpu_held{job="${job}"} == 1)`)[0]?.value[1] === "4" ? true : undefined),
        60_000,
      );
    }
    // Prometheus applies its targets up to 5 s after start, so with `for: 3s` the absent-job
    // alert may fire meanwhile; with every GPU held, none stays.
    await until("no alert with every GPU held", () => (alerts().length === 0 ? true : undefined), 15_000);
  });

  it("returns a lost GPU with its labels, and fires the lost and not-held alerts", async () => {
    simulate({ gpu: 3, afterMs: 500 });
    run("systemctl restart gpu-persistd");
    const gpu = JSON.parse(run("gpu-persistd status --json")).devices[3];
    const lost = await until(
      "the lost GPU in both jobs",
      () => {
        const result = query("gpu_persistd_gpu_lost == 1");
        return result.length === 2 ? result : undefined;
      },
      30_000,
    );
    for (const sample of lost) {
      expect(sample.metric).toMatchObject({
        gpu: "3",
        uuid: gpu.uuid,
        pci_bus_id: gpu.pciBusId,
        name: gpu.name,
      });
    }
    expect(lost.map((s) => s.metric.job).sort()).toEqual(["gpu-persistd", "node"]);

    const firing = (name: string) => (a: Alert) =>
      a.labels.alertname === name && a.labels.gpu === "3" && a.state === "firing";
    await until("GpuPersistdGpuLost firing", () => alerts().find(firing("GpuPersistdGpuLost")), 15_000);
    const notHeld = await until(
      "GpuPersistdGpuNotHeld firing after its for:",
      () => alerts().find(firing("GpuPersistdGpuNotHeld")),
      15_000,
    );
    expect(notHeld.labels).toMatchObject({ pci_bus_id: gpu.pciBusId, severity: "warning" });
    // Only GPU 3: the held ones fire nothing.
    expect(alerts().filter((a) => a.labels.gpu !== undefined && a.labels.gpu !== "3")).toEqual([]);
  });

  it("fires GpuPersistdDown when the daemon stops", async () => {
    run("systemctl stop gpu-persistd");
    const down = await until(
      "GpuPersistdDown firing",
      () => alerts().find((a) => a.labels.alertname === "GpuPersistdDown" && a.state === "firing"),
      20_000,
    );
    expect(down.labels).toMatchObject({ instance: METRICS, job: "gpu-persistd", severity: "critical" });
    run("systemctl stop fleet-prometheus fleet-node-exporter");
  });
});
