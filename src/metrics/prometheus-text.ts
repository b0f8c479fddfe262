// Prometheus text exposition format 0.0.4: one family (HELP, TYPE, samples) at a time.
export const CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8";

export type Labels = Readonly<Record<string, string>>;

export interface Sample {
  labels?: Labels;
  value: number;
  /** Appended to the family name: "_bucket", "_sum", "_count" of a histogram. */
  suffix?: string;
}

const escapeLabel = (v: string) => v.replaceAll("\\", "\\\\").replaceAll('"', '\\"').replaceAll("\n", "\\n");
const escapeHelp = (v: string) => v.replaceAll("\\", "\\\\").replaceAll("\n", "\\n");

function formatValue(value: number): string {
  if (Number.isNaN(value)) return "NaN";
  if (value === Number.POSITIVE_INFINITY) return "+Inf";
  if (value === Number.NEGATIVE_INFINITY) return "-Inf";
  return String(value);
}

function formatLabels(labels: Labels | undefined): string {
  const entries = Object.entries(labels ?? {});
  if (!entries.length) return "";
  return `{${entries.map(([k, v]) => `${k}="${escapeLabel(v)}"`).join(",")}}`;
}

/** One metric family; a family without samples still declares itself, so dashboards see it. */
export function family(name: string, type: "gauge" | "counter" | "histogram", help: string, samples: Sample[]): string {
  const lines = [`# HELP ${name} ${escapeHelp(help)}`, `# TYPE ${name} ${type}`];
  for (const s of samples) lines.push(`${name}${s.suffix ?? ""}${formatLabels(s.labels)} ${formatValue(s.value)}`);
  return `${lines.join("\n")}\n`;
}

/** A cumulative histogram with fixed upper bounds. */
export class Histogram {
  readonly #bounds: readonly number[];
  readonly #counts: number[];
  #sum = 0;
  #count = 0;

  constructor(bounds: readonly number[]) {
    this.#bounds = bounds;
    this.#counts = bounds.map(() => 0);
  }

  observe(value: number): void {
    this.#sum += value;
    this.#count++;
    this.#bounds.forEach((bound, i) => {
      if (value <= bound) this.#counts[i] = (this.#counts[i] ?? 0) + 1;
    });
  }

  samples(): Sample[] {
    return [
      ...this.#bounds.map((bound, i) => ({
        suffix: "_bucket",
        labels: { le: String(bound) },
        value: this.#counts[i] ?? 0,
      })),
      { suffix: "_bucket", labels: { le: "+Inf" }, value: this.#count },
      { suffix: "_sum", value: this.#sum },
      { suffix: "_count", value: this.#count },
    ];
  }
}
