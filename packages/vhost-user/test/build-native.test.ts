// The install step (scripts/build-native.mjs, the package's `install` script) on a machine that
// lacks what a build needs: it must name what is missing, fail a hand-run build, keep an install
// going (the codec works without the addon) and leave the reason for the runtime error.
import { spawnSync } from "node:child_process";
import { cpSync, existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterEach, describe, expect, it } from "vitest";
import { BUILD_NATIVE_COMMAND, NativeAddonMissingError } from "../src/index.js";

const pkg = fileURLToPath(new URL("..", import.meta.url));
const dirs: string[] = [];

/** A copy of the package's install inputs (as in the tarball) in a fresh directory. */
function stage(): string {
  const dir = mkdtempSync(join(tmpdir(), "vhost-user-build-"));
  dirs.push(dir);
  for (const f of ["package.json", "scripts/build-native.mjs", "native/binding.gyp"]) {
    cpSync(join(pkg, f), join(dir, f));
  }
  return dir;
}

/** Run the script with an empty PATH: no compiler, no make, no python3, no node-gyp. */
function runBare(dir: string, env: Record<string, string> = {}) {
  return spawnSync(process.execPath, [join(dir, "scripts", "build-native.mjs")], {
    cwd: dir,
    encoding: "utf8",
    env: { PATH: "/nonexistent", ...env },
  });
}

afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

describe("the addon's install step on a machine without a toolchain", () => {
  it("run by hand, exits 1 naming the compiler, make and python3, and the command to rerun", () => {
    const dir = stage();
    const r = runBare(dir);
    expect(r.status).toBe(1);
    expect(r.stderr).toContain("a C compiler (cc, gcc or clang)");
    expect(r.stderr).toContain("make");
    expect(r.stderr).toContain("python3");
    expect(r.stderr).toContain(`node ${join(dir, "scripts", "build-native.mjs")}`);
    expect(existsSync(join(dir, "native", "build"))).toBe(false);
  });

  it("as the install script, lets the install succeed and records the reason", () => {
    const dir = stage();
    const r = runBare(dir, { npm_lifecycle_event: "install" });
    expect(r.status).toBe(0);
    const why = readFileSync(join(dir, "native", "build-failure.txt"), "utf8");
    expect(why).toMatch(/^missing a C compiler \(cc, gcc or clang\), make, python3/);
  });
});

describe("NativeAddonMissingError", () => {
  it("names the build script by its path in this package, not a monorepo command", () => {
    const e = new NativeAddonMissingError(new Error("Cannot find module vhost_user.node"));
    expect(BUILD_NATIVE_COMMAND).toBe(`node ${join(pkg, "scripts", "build-native.mjs")}`);
    expect(e.message).toContain(BUILD_NATIVE_COMMAND);
    expect(e.message).not.toContain("pnpm");
  });
});
