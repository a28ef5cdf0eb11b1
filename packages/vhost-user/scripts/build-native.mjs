#!/usr/bin/env node
// Builds the vhost-user addon (native/build/Release/vhost_user.node) from native/*.c with node-gyp.
//
// Runs as the package's `install` script (npm, pnpm and yarn run it on install) and by hand:
//   node node_modules/@virtio-ts/vhost-user/scripts/build-native.mjs
// (NativeAddonMissingError prints this command with the real path). Works inside node_modules:
// node-gyp is a dependency of this package, resolved from here.
//
// Offline: node-gyp is told where this Node's own headers are (`--nodedir`), so it never tries to
// download them. Debian's nodejs keeps them in /usr/include/node; the official tarballs in
// <prefix>/include/node, next to bin/node. Only when no local headers exist does node-gyp fetch
// them (which needs the network).
//
// Before building, it checks what the build needs (Linux, a C compiler, make, python3, Node's
// headers) and names whatever is missing. As an install script a failed build does not fail the
// install (the message codec works without the addon): the reason goes to stderr and to
// native/build-failure.txt, which NativeAddonMissingError quotes at the first call that needs
// the addon. Run by hand, a failed build exits 1.
import { spawnSync } from "node:child_process";
import { existsSync, rmSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { delimiter, dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const pkg = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const native = join(pkg, "native");
const failureFile = join(native, "build-failure.txt");
const asInstall = process.env.npm_lifecycle_event === "install";
const self = join(pkg, "scripts", "build-native.mjs");

/** Stop: report why, record it for the runtime error, and exit (0 at install, 1 by hand). */
function fail(reason) {
  const text = `${reason}\nAfter fixing that, build it with: node ${self}`;
  console.error(`@virtio-ts/vhost-user: the native addon was not built: ${text}`);
  try {
    writeFileSync(failureFile, `${reason}\n`);
  } catch {
    // A read-only install tree: the runtime error then says only that the addon is missing.
  }
  process.exit(asInstall ? 0 : 1);
}

/** Whether `name` is an executable file on PATH (or an absolute path to one). */
function onPath(name) {
  if (name.includes("/")) return existsSync(name);
  return (process.env.PATH ?? "")
    .split(delimiter)
    .some((dir) => dir !== "" && existsSync(join(dir, name)));
}

if (process.platform !== "linux") {
  fail(`it needs Linux (SCM_RIGHTS, memfd, eventfd); this is ${process.platform}.`);
}

const missing = [];
const cc = process.env.CC?.split(" ")[0];
if (!(cc ? onPath(cc) : onPath("cc") || onPath("gcc") || onPath("clang"))) {
  missing.push(cc ? `the C compiler $CC=${cc}` : "a C compiler (cc, gcc or clang)");
}
if (!onPath("make")) missing.push("make");
const python = process.env.PYTHON ?? process.env.npm_config_python;
if (!(python ? onPath(python) : onPath("python3"))) {
  missing.push(python ? `python ($PYTHON=${python})` : "python3 (node-gyp runs on it)");
}

const candidates = [
  process.env.npm_config_nodedir,
  resolve(dirname(process.execPath), ".."),
  "/usr",
  "/usr/local",
].filter((d) => d !== undefined && d !== "");
const nodedir = candidates.find((d) => existsSync(join(d, "include", "node", "node_api.h")));

let gyp;
try {
  gyp = createRequire(join(pkg, "package.json")).resolve("node-gyp/bin/node-gyp.js");
} catch {
  // npm and pnpm name their own node-gyp to lifecycle scripts.
  const bundled = process.env.npm_config_node_gyp;
  if (bundled !== undefined && existsSync(bundled)) gyp = bundled;
}
if (gyp === undefined) missing.push("node-gyp (a dependency of this package: reinstall it)");

if (missing.length > 0) {
  fail(`missing ${missing.join(", ")}. On Debian or Ubuntu: apt-get install gcc make python3.`);
}

const args = [gyp, "rebuild", "--jobs=1"];
if (nodedir !== undefined) {
  args.push(`--nodedir=${nodedir}`);
} else {
  console.error(
    `@virtio-ts/vhost-user: no Node headers (include/node/node_api.h) under ${candidates.join(", ")}; ` +
      "node-gyp will try to download them",
  );
}
console.log(`build-native: node-gyp ${args.slice(1).join(" ")}`);
// binding.gyp lives in native/, not at the package root, so that no package manager runs its
// own `node-gyp rebuild` for it: this script runs it, after the checks above.
const r = spawnSync(process.execPath, args, {
  cwd: native,
  // As an install script, keep node-gyp's output for the failure message.
  stdio: asInstall ? ["ignore", "pipe", "pipe"] : "inherit",
  encoding: "utf8",
  // An npm_config_nodedir in the environment (even empty) would override the flag.
  env: nodedir === undefined ? process.env : { ...process.env, npm_config_nodedir: nodedir },
});
if (r.status !== 0) {
  const out = `${r.stdout ?? ""}${r.stderr ?? ""}`;
  const lastError = out
    .split("\n")
    .filter((l) => /error/i.test(l))
    .slice(0, 3)
    .join(" / ");
  fail(
    nodedir === undefined
      ? `Node's headers are not on this machine (looked for include/node/node_api.h under ${candidates.join(", ")}) and node-gyp could not download them (${lastError || `exit ${r.status}`}). Install them (Debian: apt-get install nodejs, whose headers are in /usr/include/node; other systems: the Node.js tarball's include/node) or set npm_config_nodedir to the directory above include/node.`
      : `node-gyp rebuild failed with exit ${r.status ?? r.signal}${lastError ? `: ${lastError}` : ""}.`,
  );
}
rmSync(failureFile, { force: true });
console.log(`build-native: built ${join(native, "build", "Release", "vhost_user.node")}`);
