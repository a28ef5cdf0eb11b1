import { existsSync, readdirSync } from "node:fs";
import { defineConfig } from "vitest/config";

// One project per package (and tool) that has a test/ folder; tests run against the
// TypeScript sources through the "source" export condition, so no build is needed to iterate.
const projects = ["packages", "tools"].flatMap((dir) =>
  readdirSync(dir)
    .filter((name) => existsSync(`${dir}/${name}/test`))
    .map((name) => ({
      extends: true as const,
      test: {
        name,
        root: `${dir}/${name}`,
        include: ["test/**/*.test.ts"],
        // A project's once-per-run setup (the interop tests' KVM boot probe), when it has one.
        ...(existsSync(`${dir}/${name}/test/global-setup.ts`)
          ? { globalSetup: ["test/global-setup.ts"] }
          : {}),
      },
    })),
);

const conditions = ["source", "node", "import", "module", "default"];

export default defineConfig({
  resolve: { conditions },
  ssr: { resolve: { conditions } },
  test: { projects, testTimeout: 60_000, hookTimeout: 60_000 },
});
