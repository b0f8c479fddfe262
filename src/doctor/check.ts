// One finding of `gpu-persistd doctor`: what was checked, what was found, and for a failure
// the exact command or step that fixes it.
export interface Check {
  /** Stable name for scripts: "kernel-module", "gpu:0", ... */
  id: string;
  title: string;
  ok: boolean;
  detail: string;
  /** Set when ok is false. */
  fix?: string;
}

export const pass = (id: string, title: string, detail: string): Check => ({ id, title, ok: true, detail });

export const fail = (id: string, title: string, detail: string, fix: string): Check => ({
  id,
  title,
  ok: false,
  detail,
  fix,
});
