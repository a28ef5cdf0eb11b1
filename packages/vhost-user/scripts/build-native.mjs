// Builds the vhost-user addon (native/build/Release/vhost_user.node) from native/*.c with node-gyp,
// offline: node-gyp is told where this Node's own headers are (`--nodedir`), so it never tries
// to download them. Debian's nodejs keeps them in /usr/include/node; the official tarballs in
// <prefix>/include/node, next to bin/node. Run: pnpm --filter @virtio-ts/vhost-user build:native
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const pkg = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const candidates = [
  process.env.npm_config_nodedir,
  resolve(dirname(process.execPath), ".."),
  "/usr",
  "/usr/local",
].filter((d) => d !== undefined && d !== "");
const nodedir = candidates.find((d) => existsSync(join(d, "include", "node", "node_api.h")));
if (nodedir === undefined) {
  console.error(
    `build-native: no Node headers (include/node/node_api.h) under ${candidates.join(", ")}; ` +
      "install them (Debian: libnode-dev / nodejs) or set npm_config_nodedir",
  );
  process.exit(1);
}
const gyp = createRequire(join(pkg, "package.json")).resolve("node-gyp/bin/node-gyp.js");
const args = [gyp, "rebuild", `--nodedir=${nodedir}`, "--jobs=1"];
console.log(`build-native: node ${args.slice(1).join(" ")}`);
// binding.gyp lives in native/, not at the package root, so that no package manager builds the
// addon implicitly at install time (npm and pnpm run `node-gyp rebuild` for a root binding.gyp):
// installing virtio-ts must work where no compiler exists.
const r = spawnSync(process.execPath, args, {
  cwd: join(pkg, "native"),
  stdio: "inherit",
  // An npm_config_nodedir in the environment (even empty) would override the flag.
  env: { ...process.env, npm_config_nodedir: nodedir },
});
process.exit(r.status ?? 1);
