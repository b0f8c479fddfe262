import { defineConfig } from "vitest/config";

// The in-process tests block a few libuv pool threads at the simulator's gates on purpose;
// workers inherit this (the pool is sized when first used, so it must be set before).
process.env.UV_THREADPOOL_SIZE ??= "16";

export default defineConfig({
  test: {
    exclude: ["node_modules/**"],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    pool: "forks",
    // Two cores: daemon tests spawn processes and measure parallelism; keep them apart.
    fileParallelism: false,
    projects: [
      {
        extends: true,
        // The fast layer: in-process, no root, no network, no spawned daemon (npm run test:unit).
        test: { name: "unit", include: ["test/unit/**/*.test.ts", "test/rpc/codec.test.ts"] },
      },
      {
        extends: true,
        // Spawned daemons, real systemd in nspawn, packages, soak (npm test runs these too).
        test: {
          name: "outer",
          include: ["test/**/*.test.ts"],
          exclude: ["node_modules/**", "test/unit/**", "test/rpc/codec.test.ts"],
        },
      },
    ],
  },
});
