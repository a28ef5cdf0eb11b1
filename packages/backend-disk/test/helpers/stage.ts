// A child process that runs as another user (nobody) must be able to read what it loads. The
// checkout may live where only its owner may enter (a `mktemp -d` folder is mode 0700), so
// such a child never loads anything from the checkout: the compiled packages it needs and its
// fixture are copied into a fresh directory that every user may traverse and read.
import { cpSync, mkdtempSync, readFileSync, rmSync, statSync } from "node:fs";
import { chmod } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join, parse, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const packagesDir = fileURLToPath(new URL("../../..", import.meta.url));

/** Whether every directory from `dir` up to `/` lets other users through (o+x). */
function traversableByOthers(dir: string): boolean {
  let d = resolve(dir);
  for (;;) {
    const st = statSync(d, { throwIfNoEntry: false });
    if (st === undefined || (st.mode & 0o001) === 0) return false;
    if (d === parse(d).root) return true;
    d = dirname(d);
  }
}

/** The workspace packages `name` needs at run time, itself first. */
function closure(name: string, seen = new Set<string>()): Set<string> {
  if (seen.has(name)) return seen;
  seen.add(name);
  const manifest = JSON.parse(
    readFileSync(join(packagesDir, name.replace("@virtio-ts/", ""), "package.json"), "utf8"),
  ) as { dependencies?: Record<string, string> };
  for (const dep of Object.keys(manifest.dependencies ?? {})) {
    if (dep.startsWith("@virtio-ts/")) closure(dep, seen);
  }
  return seen;
}

/** A staged directory: `node_modules/@virtio-ts/<pkg>/{package.json,dist}` and the fixtures. */
export interface Stage {
  /** The staged directory (mode 0755, under a base every user can traverse). */
  readonly dir: string;
  /** Path of a staged fixture. */
  fixture(name: string): string;
  /** Remove the staged directory. */
  cleanup(): void;
}

/**
 * Stage the compiled package `pkg` with its workspace dependencies and `fixtures` (files of
 * test/fixtures) for a child process running as another user.
 * @throws Error when neither `os.tmpdir()` nor `/tmp` can be traversed by other users
 */
export async function stageForOtherUser(pkg: string, fixtures: readonly string[]): Promise<Stage> {
  const base = [tmpdir(), "/tmp"].find(traversableByOthers);
  if (base === undefined) {
    throw new Error(
      `neither ${tmpdir()} nor /tmp can be entered by other users, so a test that runs a child process as nobody has nowhere to put what it loads; set TMPDIR to a world-traversable directory`,
    );
  }
  const dir = mkdtempSync(join(base, "virtio-ts-other-user-"));
  await chmod(dir, 0o755);
  for (const name of closure(pkg)) {
    const from = join(packagesDir, name.replace("@virtio-ts/", ""));
    const to = join(dir, "node_modules", name);
    cpSync(join(from, "package.json"), join(to, "package.json"));
    cpSync(join(from, "dist"), join(to, "dist"), { recursive: true });
  }
  for (const f of fixtures) {
    cpSync(fileURLToPath(new URL(`../fixtures/${f}`, import.meta.url)), join(dir, f));
  }
  // cpSync keeps modes; make sure everything is readable and directories enterable by others.
  await chmodTree(dir);
  return {
    dir,
    fixture: (name) => join(dir, name),
    cleanup: () => rmSync(dir, { recursive: true, force: true }),
  };
}

async function chmodTree(path: string): Promise<void> {
  const { readdir } = await import("node:fs/promises");
  const st = statSync(path);
  if (st.isDirectory()) {
    await chmod(path, 0o755);
    for (const e of await readdir(path)) await chmodTree(join(path, e));
  } else {
    await chmod(path, 0o644);
  }
}
