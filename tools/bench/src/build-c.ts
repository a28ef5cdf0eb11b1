// Compile a C baseline of the benches (c/*.c) into a temporary directory, in the run that uses it.
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

/** A compiled baseline: the binary, and the directory to remove when done. */
export interface BuiltC {
  readonly bin: string;
  readonly dir: string;
}

/**
 * Compile `c/<name>.c` with `gcc -O2 -pthread`.
 * @returns the binary and its directory, or why it could not be built ("gcc not found", or gcc's
 *   message)
 */
export function buildC(name: string): BuiltC | string {
  const src = fileURLToPath(new URL(`../c/${name}.c`, import.meta.url));
  const dir = mkdtempSync(join(tmpdir(), `virtio-ts-bench-${name}-`));
  const bin = join(dir, name);
  try {
    execFileSync("gcc", ["-O2", "-pthread", "-o", bin, src], { stdio: "pipe" });
    return { bin, dir };
  } catch (e) {
    rmSync(dir, { recursive: true, force: true });
    const err = e as { code?: string; stderr?: Buffer };
    return err.code === "ENOENT" ? "gcc not found" : `gcc failed: ${String(err.stderr ?? e)}`;
  }
}
