// Runs a package README's example the way a user would: the first ```ts block, stripped of its
// types, as an ES module in a plain Node process next to the package (so `@virtio-ts/*`
// resolve to the built packages, as for a consumer). Returns what it printed. The tests that
// call it check the printed values, so a README example that stops compiling, stops running or
// prints something else fails a test.
import { execFileSync } from "node:child_process";
import { readFileSync, rmSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";

const ts = createRequire(import.meta.url)("typescript") as typeof import("typescript");

/** The `n`-th (0-based) ```ts block of a Markdown text. */
export function tsBlock(markdown: string, n = 0): string {
  const blocks = [...markdown.matchAll(/^```ts\n([\s\S]*?)^```$/gm)].map((m) => m[1]!);
  const b = blocks[n];
  if (b === undefined) throw new Error(`no ts block number ${n} in the README`);
  return b;
}

/**
 * Run block `n` of the README of the package whose directory is `packageDir` (a file URL
 * ending in "/"), with `node`, and return its standard output split into lines.
 * @param timeoutMs - how long it may run (default 60 s)
 */
export function runReadmeExample(packageDir: URL, n = 0, timeoutMs = 60_000): string[] {
  const readme = readFileSync(new URL("README.md", packageDir), "utf8");
  const js = ts.transpileModule(tsBlock(readme, n), {
    compilerOptions: {
      module: ts.ModuleKind.ESNext,
      target: ts.ScriptTarget.ES2022,
      verbatimModuleSyntax: false,
    },
  }).outputText;
  // Inside the package, so its node_modules (the workspace links) resolve the imports.
  const file = fileURLToPath(new URL(`test/.readme-example-${n}.generated.mjs`, packageDir));
  writeFileSync(file, js);
  try {
    const out = execFileSync(process.execPath, [file], {
      cwd: fileURLToPath(packageDir),
      encoding: "utf8",
      timeout: timeoutMs,
      stdio: ["ignore", "pipe", "pipe"],
    });
    return out.trimEnd().split("\n");
  } catch (e) {
    const err = e as { stdout?: string; stderr?: string; message: string };
    throw new Error(
      `the README example of ${fileURLToPath(packageDir)} failed: ${err.message}\n${err.stdout ?? ""}${err.stderr ?? ""}`,
    );
  } finally {
    rmSync(file, { force: true });
  }
}
