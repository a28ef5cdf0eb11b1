import { existsSync, readdirSync } from "node:fs";
import { defineConfig } from "vitest/config";

/**
 * Stress tests (`test/*-stress.test.ts`) saturate the machine on purpose and state latency
 * bounds for a well-behaved client under attack. Each runs in a stage of its own after
 * everything else (vitest's `sequence.groupOrder`), so a QEMU guest booting in another test file
 * does not share the two cores with them; a package's stress project is `<package>-stress`.
 */
const STRESS = "test/**/*-stress.test.ts";

const folders = ["packages", "tools"].flatMap((dir) =>
  readdirSync(dir)
    .filter((name) => existsSync(`${dir}/${name}/test`))
    .map((name) => ({ dir, name })),
);

// One project per package (and tool) that has a test/ folder; tests run against the
// TypeScript sources through the "source" export condition, so no build is needed to iterate.
const projects = folders.map(({ dir, name }) => ({
  extends: true as const,
  test: {
    name,
    root: `${dir}/${name}`,
    include: ["test/**/*.test.ts"],
    exclude: [STRESS],
    // A project's once-per-run setup (the interop tests' KVM boot probe), when it has one.
    ...(existsSync(`${dir}/${name}/test/global-setup.ts`)
      ? { globalSetup: ["test/global-setup.ts"] }
      : {}),
  },
}));

const stressProjects = folders
  .filter(({ dir, name }) =>
    readdirSync(`${dir}/${name}/test`).some((f) => f.endsWith("-stress.test.ts")),
  )
  .map(({ dir, name }, i) => ({
    extends: true as const,
    test: {
      name: `${name}-stress`,
      root: `${dir}/${name}`,
      include: [STRESS],
      fileParallelism: false,
      sequence: { groupOrder: 1 + i },
    },
  }));

const conditions = ["source", "node", "import", "module", "default"];

export default defineConfig({
  resolve: { conditions },
  ssr: { resolve: { conditions } },
  test: {
    projects: [...projects, ...stressProjects],
    testTimeout: 60_000,
    hookTimeout: 60_000,
  },
});
