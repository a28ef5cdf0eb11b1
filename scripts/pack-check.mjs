#!/usr/bin/env node
// The packaging stage of CI (.ci/run calls it after the build): is every package ready for a
// third party? It works only on what `pnpm pack` produces, as a user who installs from the
// registry would get it:
//
//   1. packs every public package (pnpm replaces workspace:^ with real version ranges);
//   2. checks each tarball: LICENSE (the root's Apache-2.0 text), README, metadata (repository
//      with directory, homepage, bugs, keywords), internal dependency ranges, no .tsbuildinfo,
//      tests, generated files, native build trees, stale dist files or local paths; then
//      publint --strict and @arethetypeswrong/cli (ESM-only profile) on the tarball;
//   3. installs all tarballs with npm into a fresh project in the system temp directory, outside
//      the workspace (only the npm registry is reached, for third-party dependencies), where the
//      vhost-user install step builds its addon;
//   4. runs there a Node ESM program (scripts/pack-check/node/consumer.mjs) and every package
//      README's first example, whose output must equal the same example's output in the
//      workspace;
//   5. type-checks every browser-safe entry in a browser TypeScript project (lib DOM, no
//      @types/node, skipLibCheck false);
//   6. bundles a browser page (scripts/pack-check/browser) importing every browser-safe entry
//      with esbuild and with Vite, no externals, and fails on any `node:` import (or Vite's
//      browser-external stub) in the output;
//   7. runs each bundle in headless Chromium (Debian's, driven by playwright-core): a blk
//      write / read round trip on split and packed rings, the contract kit's blk device suite,
//      and a split ring whose device runs in a Web Worker;
//   8. runs `changeset version` on a throw-away copy of the package manifests and changesets:
//      every changeset must parse, every public package must get a release (0.1.0 or more for
//      one still at 0.0.0), no private package may change, and internal dependencies must stay
//      workspace:^ (which pnpm pack turns into ^<new version>, as step 2 checks).
//
// Usage: node scripts/pack-check.mjs [--keep]   (--keep leaves the temporary project in place)
// Needs: `pnpm build` done, Debian's chromium (scripts/test-deps.sh installs it), gcc / make /
// python3 (the vhost-user addon), and the npm registry.
import { spawn } from "node:child_process";
import {
  cpSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { createServer } from "node:http";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { extname, join, relative, resolve, sep } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const root = resolve(fileURLToPath(import.meta.url), "../..");
const fixtures = join(root, "scripts", "pack-check");
const keep = process.argv.includes("--keep");
const require = createRequire(join(root, "package.json"));
const started = Date.now();
const problems = [];

/** Packages that are Node-only by nature: no browser entry to type-check, bundle or run. */
const NODE_ONLY_PACKAGES = new Set(["@virtio-ts/vhost", "@virtio-ts/vhost-user"]);
/** Entries of browser-safe packages that are Node-only (`./node`), or need a Node test runner. */
const NODE_ONLY_ENTRIES = new Set(["./node", "./vitest"]);
/** How Chromium is started (see the project's briefing: no downloads, no background traffic). */
const CHROMIUM = "/usr/bin/chromium";
const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

function step(name) {
  console.log(`\n--- pack-check: ${name} (+${((Date.now() - started) / 1000).toFixed(1)} s)`);
}

function problem(msg) {
  problems.push(msg);
  console.log(`  FAIL ${msg}`);
}

/** Run a command; resolve with its exit code and output (never rejects on a non-zero exit). */
function run(cmd, args, options = {}) {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(cmd, args, {
      cwd: options.cwd ?? root,
      env: options.env ?? process.env,
      stdio: ["ignore", "pipe", "pipe"],
    });
    let out = "";
    child.stdout.on("data", (d) => {
      out += d;
    });
    child.stderr.on("data", (d) => {
      out += d;
    });
    const timer = setTimeout(() => child.kill("SIGKILL"), options.timeoutMs ?? 300_000);
    child.on("error", reject);
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      resolvePromise({ code: code ?? (signal ? 128 : 1), out });
    });
  });
}

/** Run `fn` over `items`, at most `limit` at a time (this machine has two cores). */
async function pool(items, limit, fn) {
  const results = new Array(items.length);
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(limit, items.length) }, async () => {
      while (next < items.length) {
        const i = next++;
        results[i] = await fn(items[i], i);
      }
    }),
  );
  return results;
}

/** A workspace devDependency's command (node_modules/.bin, as pnpm links it). */
function bin(name) {
  const file = join(root, "node_modules", ".bin", name);
  if (!existsSync(file)) throw new Error(`no ${file}: run pnpm install`);
  return file;
}

function walk(dir) {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? walk(join(dir, e.name)) : [join(dir, e.name)],
  );
}

// ---------------------------------------------------------------------------------------------
step("preconditions");
const packages = readdirSync(join(root, "packages"))
  .map((d) => ({ dir: join(root, "packages", d), short: d }))
  .filter((p) => existsSync(join(p.dir, "package.json")))
  .map((p) => ({ ...p, json: JSON.parse(readFileSync(join(p.dir, "package.json"), "utf8")) }))
  .filter((p) => p.json.private !== true);
for (const p of packages) {
  if (!existsSync(join(p.dir, "dist", "index.js"))) {
    console.error(`pack-check: ${p.json.name} is not built (no dist/index.js): run pnpm build`);
    process.exit(1);
  }
}
if (!existsSync(CHROMIUM)) {
  console.error(
    `pack-check: no ${CHROMIUM}: install Debian's chromium (apt-get install chromium; scripts/test-deps.sh does)`,
  );
  process.exit(1);
}
const versions = new Map(packages.map((p) => [p.json.name, p.json.version]));
const rootLicense = readFileSync(join(root, "LICENSE"), "utf8");
if (!rootLicense.includes("Apache License") || !rootLicense.includes("Version 2.0, January 2004")) {
  problem("LICENSE at the repository root is not the Apache-2.0 text");
}
const rootRepo = JSON.parse(readFileSync(join(root, "package.json"), "utf8")).repository?.url;
console.log(`  ${packages.length} public packages; npm ${(await run("npm", ["-v"])).out.trim()}`);

// ---------------------------------------------------------------------------------------------
step("pnpm pack");
const work = mkdtempSync(join(tmpdir(), "virtio-ts-pack-check-"));
if (!relative(root, work).startsWith("..")) throw new Error(`${work} is inside the workspace`);
const tarDir = join(work, "tarballs");
mkdirSync(tarDir);
{
  const r = await run("pnpm", [
    "-r",
    ...packages.flatMap((p) => ["--filter", p.json.name]),
    "pack",
    "--pack-destination",
    tarDir,
  ]);
  if (r.code !== 0) {
    console.error(r.out);
    process.exit(1);
  }
}
for (const p of packages) {
  p.tarball = join(
    tarDir,
    `${p.json.name.replace("@", "").replace("/", "-")}-${p.json.version}.tgz`,
  );
  if (!existsSync(p.tarball)) problem(`${p.json.name}: pnpm pack made no ${p.tarball}`);
}

// ---------------------------------------------------------------------------------------------
step("tarball contents and metadata");
const unpacked = join(work, "unpacked");
for (const p of packages) {
  const into = join(unpacked, p.short);
  mkdirSync(into, { recursive: true });
  const t = await run("tar", ["xzf", p.tarball, "-C", into]);
  if (t.code !== 0) {
    problem(`${p.json.name}: tar failed: ${t.out}`);
    continue;
  }
  const pkgDir = join(into, "package");
  const files = walk(pkgDir).map((f) => relative(pkgDir, f).split(sep).join("/"));
  const name = p.json.name;
  const license = existsSync(join(pkgDir, "LICENSE"))
    ? readFileSync(join(pkgDir, "LICENSE"), "utf8")
    : "";
  if (license !== rootLicense)
    problem(`${name}: the tarball's LICENSE is missing or not the root's text`);
  if (!files.includes("README.md")) problem(`${name}: no README.md in the tarball`);
  for (const f of files) {
    if (/\.tsbuildinfo$/.test(f)) problem(`${name}: ships ${f}`);
    if (/^test\/|\.test\.[cm]?[jt]s$/.test(f)) problem(`${name}: ships the test file ${f}`);
    if (/\.generated\./.test(f) || /(^|\/)build\//.test(f))
      problem(`${name}: ships the generated ${f}`);
    const m = /^dist\/(.+)\.(js|d\.ts)$/.exec(f);
    if (m && !files.includes(`src/${m[1]}.ts`))
      problem(`${name}: ${f} has no source (stale build output?)`);
  }
  for (const f of files) {
    if (!/\.(js|mjs|ts|map|json|md|c|h|gyp)$/.test(f)) continue;
    const text = readFileSync(join(pkgDir, f), "utf8");
    if (text.includes(root)) problem(`${name}: ${f} holds the local path ${root}`);
  }
  const j = JSON.parse(readFileSync(join(pkgDir, "package.json"), "utf8"));
  if (JSON.stringify(j).includes("workspace:"))
    problem(`${name}: package.json keeps a workspace: range`);
  for (const field of ["dependencies", "peerDependencies", "optionalDependencies"]) {
    for (const [dep, range] of Object.entries(j[field] ?? {})) {
      if (versions.has(dep) && range !== `^${versions.get(dep)}`) {
        problem(`${name}: ${field}.${dep} is "${range}", expected "^${versions.get(dep)}"`);
      }
    }
  }
  if (j.license !== "Apache-2.0") problem(`${name}: license is ${j.license}`);
  if (j.repository?.url !== rootRepo || j.repository?.directory !== `packages/${p.short}`) {
    problem(`${name}: repository must be { url: ${rootRepo}, directory: packages/${p.short} }`);
  }
  if (typeof j.homepage !== "string" || typeof j.bugs?.url !== "string")
    problem(`${name}: no homepage or bugs`);
  if (!Array.isArray(j.keywords) || j.keywords.length < 3)
    problem(`${name}: fewer than 3 keywords`);
  if (typeof j.description !== "string" || j.description.length < 20)
    problem(`${name}: no description`);
  p.exports = j.exports;
  console.log(
    `  ${name}: ${files.length} files, ${(statSync(p.tarball).size / 1024).toFixed(0)} KiB`,
  );
}

// ---------------------------------------------------------------------------------------------
step("publint --strict and @arethetypeswrong/cli --profile esm-only on each tarball");
const publint = bin("publint");
const attw = bin("attw");
await pool(packages, 2, async (p) => {
  const lint = await run(publint, ["run", p.tarball, "--strict"]);
  if (lint.code !== 0 || !/All good/.test(lint.out))
    problem(`${p.json.name}: publint:\n${lint.out}`);
  const types = await run(attw, [p.tarball, "--profile", "esm-only", "--format", "table-flipped"]);
  if (types.code !== 0) problem(`${p.json.name}: attw:\n${types.out}`);
  console.log(
    `  ${p.json.name}: publint ${lint.code === 0 ? "ok" : "FAIL"}, attw ${types.code === 0 ? "ok" : "FAIL"}`,
  );
});

// ---------------------------------------------------------------------------------------------
step("npm install of every tarball into a fresh project outside the workspace");
const app = join(work, "app");
mkdirSync(app);
writeFileSync(
  join(app, "package.json"),
  `${JSON.stringify({ name: "virtio-ts-consumer", private: true, type: "module" }, null, 2)}\n`,
);
{
  // A clean environment for npm: nothing of the workspace's pnpm or of this script leaks in.
  const env = Object.fromEntries(
    Object.entries(process.env).filter(([k]) => !/^(npm_|PNPM_|pnpm_)/i.test(k)),
  );
  const r = await run(
    "npm",
    ["install", "--no-audit", "--no-fund", "--loglevel=error", ...packages.map((p) => p.tarball)],
    { cwd: app, env, timeoutMs: 600_000 },
  );
  if (r.code !== 0) {
    console.error(r.out);
    problem("npm install of the tarballs failed");
    finish();
  }
  const addon = join(
    app,
    "node_modules/@virtio-ts/vhost-user/native/build/Release/vhost_user.node",
  );
  if (!existsSync(addon)) {
    const why = join(app, "node_modules/@virtio-ts/vhost-user/native/build-failure.txt");
    problem(
      `vhost-user: the install step built no addon: ${existsSync(why) ? readFileSync(why, "utf8") : r.out}`,
    );
  } else {
    console.log("  vhost-user: the install step built native/build/Release/vhost_user.node");
  }
  if (existsSync(join(app, "node_modules/@types/node"))) {
    problem(
      "@types/node was installed by a dependency: the browser type check would not prove anything",
    );
  }
}

// ---------------------------------------------------------------------------------------------
step("Node: a consumer program and every README's first example, run in the fresh project");
{
  cpSync(join(fixtures, "node", "consumer.mjs"), join(app, "consumer.mjs"));
  const r = await run(process.execPath, ["consumer.mjs"], { cwd: app, timeoutMs: 120_000 });
  const expected = [
    "blk over encrypted FileDisk 2048n",
    "nbd 2048 90",
    "vhost-user addon true true",
  ];
  if (r.code !== 0 || r.out.trim().split("\n").join("|") !== expected.join("|")) {
    problem(`consumer.mjs: exit ${r.code}, printed:\n${r.out}\nexpected:\n${expected.join("\n")}`);
  } else {
    console.log("  consumer.mjs: blk over an encrypted FileDisk, NBD, the vhost-user addon: ok");
  }
  const ts = require("typescript");
  const withExamples = packages.filter((p) =>
    existsSync(join(p.dir, "test", "readme-example.test.ts")),
  );
  await pool(withExamples, 2, async (p) => {
    const readme = readFileSync(join(unpacked, p.short, "package", "README.md"), "utf8");
    const block = /^```ts\n([\s\S]*?)^```$/m.exec(readme)?.[1];
    if (block === undefined) {
      problem(`${p.json.name}: the README has no ts example`);
      return;
    }
    const js = ts.transpileModule(block, {
      compilerOptions: { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022 },
    }).outputText;
    const file = `readme-${p.short}.mjs`;
    writeFileSync(join(app, file), js);
    // The same example next to the workspace package, for the output it must print.
    const inWorkspace = join(p.dir, "test", `.pack-check-${p.short}.generated.mjs`);
    writeFileSync(inWorkspace, js);
    try {
      const [there, here] = [
        await run(process.execPath, [file], { cwd: app, timeoutMs: 120_000 }),
        await run(process.execPath, [inWorkspace], { cwd: p.dir, timeoutMs: 120_000 }),
      ];
      if (there.code !== 0 || here.code !== 0 || there.out !== here.out) {
        problem(
          `${p.json.name}: README example: installed exit ${there.code}, printed:\n${there.out}\n` +
            `workspace exit ${here.code}, printed:\n${here.out}`,
        );
      } else {
        console.log(
          `  ${p.json.name}: README example ok (${there.out.trim().split("\n").length} lines)`,
        );
      }
    } finally {
      rmSync(inWorkspace, { force: true });
    }
  });
}

// ---------------------------------------------------------------------------------------------
step("browser-safe entries: TypeScript with lib DOM, no @types/node, skipLibCheck false");
const browserEntries = packages
  .filter((p) => !NODE_ONLY_PACKAGES.has(p.json.name))
  .flatMap((p) =>
    Object.keys(p.exports)
      .filter((k) => !NODE_ONLY_ENTRIES.has(k))
      .map((k) => (k === "." ? p.json.name : `${p.json.name}/${k.slice(2)}`)),
  );
console.log(`  ${browserEntries.length} entries: ${browserEntries.join(", ")}`);
const web = join(app, "web");
cpSync(join(fixtures, "browser"), web, { recursive: true });
writeFileSync(
  join(web, "all-entries.js"),
  `// Generated by scripts/pack-check.mjs: every browser-safe entry, bundled whole.\n${browserEntries
    .map((e, i) => `export * as entry${i} from "${e}";`)
    .join("\n")}\nexport const count = ${browserEntries.length};\n`,
);
{
  writeFileSync(
    join(web, "types.ts"),
    `${browserEntries.map((e, i) => `import * as entry${i} from "${e}";`).join("\n")}\n` +
      `export const all: readonly object[] = [${browserEntries.map((_, i) => `entry${i}`).join(", ")}];\n`,
  );
  writeFileSync(
    join(web, "tsconfig.json"),
    JSON.stringify({
      compilerOptions: {
        target: "ES2022",
        lib: ["ES2022", "DOM", "DOM.Iterable"],
        module: "ESNext",
        moduleResolution: "Bundler",
        types: [],
        strict: true,
        skipLibCheck: false,
        noEmit: true,
      },
      files: ["types.ts"],
    }),
  );
  const r = await run(process.execPath, [require.resolve("typescript/bin/tsc"), "-p", web]);
  if (r.code !== 0) problem(`browser type check:\n${r.out}`);
  else console.log("  tsc: every browser-safe entry compiles without Node's types");
}

// ---------------------------------------------------------------------------------------------
step("bundles: esbuild and Vite, no externals");
const NODE_IMPORT =
  /(?:\bfrom\s*|\bimport\s*\(\s*|\brequire\s*\(\s*|\bimport\s+)["']node:[^"']+["']/;
function scanBundle(tool, dir) {
  const js = walk(dir).filter((f) => extname(f) === ".js");
  let bytes = 0;
  for (const f of js) {
    const text = readFileSync(f, "utf8");
    bytes += text.length;
    const m = NODE_IMPORT.exec(text);
    if (m) problem(`${tool}: ${relative(dir, f)} imports ${m[0]}`);
    if (text.includes("__vite-browser-external"))
      problem(`${tool}: ${relative(dir, f)} holds a browser-external stub`);
  }
  console.log(`  ${tool}: ${js.length} files, ${(bytes / 1024).toFixed(0)} KiB, no node: import`);
}
const esbuildOut = join(work, "out-esbuild");
const bundled = new Set();
{
  const esbuild = await import(pathToFileURL(require.resolve("esbuild")).href);
  try {
    await esbuild.build({
      absWorkingDir: web,
      entryPoints: ["main.js", "worker.js"],
      bundle: true,
      format: "esm",
      platform: "browser",
      target: "es2022",
      outdir: esbuildOut,
      logLevel: "warning",
    });
    cpSync(join(web, "index.html"), join(esbuildOut, "index.html"));
    scanBundle("esbuild", esbuildOut);
    bundled.add("esbuild");
  } catch (e) {
    problem(`esbuild: ${e.message}`);
  }
}
const viteOut = join(work, "out-vite");
{
  const vite = await import(pathToFileURL(require.resolve("vite")).href);
  const warnings = [];
  const logger = vite.createLogger("warn");
  const warn = logger.warn;
  logger.warn = (msg, o) => {
    warnings.push(msg);
    warn(msg, o);
  };
  try {
    await vite.build({
      root: web,
      configFile: false,
      base: "./",
      logLevel: "warn",
      customLogger: logger,
      build: { outDir: viteOut, emptyOutDir: true, target: "es2022", minify: false },
      worker: { format: "es" },
    });
    for (const w of warnings) {
      if (/externalized for browser compatibility|node:/.test(w)) problem(`vite: ${w}`);
    }
    scanBundle("vite", viteOut);
    bundled.add("vite");
  } catch (e) {
    problem(`vite: ${e.message}`);
  }
}

// ---------------------------------------------------------------------------------------------
step("headless Chromium: blk round trips, the contract suite, a split ring with a worker device");
{
  const { chromium } = require("playwright-core");
  const types = { ".html": "text/html", ".js": "text/javascript", ".map": "application/json" };
  const server = createServer((req, res) => {
    const [, tool, ...rest] = new URL(req.url, "http://x").pathname.split("/");
    const base = tool === "esbuild" ? esbuildOut : tool === "vite" ? viteOut : undefined;
    const file = base && resolve(base, rest.join("/") || "index.html");
    if (!file?.startsWith(base) || !existsSync(file) || statSync(file).isDirectory()) {
      res.writeHead(404).end();
      return;
    }
    // Cross-origin isolation: SharedArrayBuffer (the worker's guest memory) needs it.
    res.writeHead(200, {
      "content-type": types[extname(file)] ?? "application/octet-stream",
      "cross-origin-opener-policy": "same-origin",
      "cross-origin-embedder-policy": "require-corp",
    });
    res.end(readFileSync(file));
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  const port = server.address().port;
  const profile = mkdtempSync(join(work, "chromium-profile-"));
  // A fresh profile directory (playwright passes it as --user-data-dir).
  const browser = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    args: CHROMIUM_ARGS,
  });
  try {
    for (const tool of ["esbuild", "vite"]) {
      if (!bundled.has(tool)) {
        problem(`chromium (${tool} bundle): not run, the bundle failed`);
        continue;
      }
      const page = await browser.newPage();
      const errors = [];
      page.on("pageerror", (e) => errors.push(String(e)));
      page.on("console", (m) => m.type() === "error" && errors.push(m.text()));
      let result;
      try {
        await page.goto(`http://127.0.0.1:${port}/${tool}/index.html`);
        await page.waitForFunction(() => window.__packCheck !== undefined, undefined, {
          timeout: 120_000,
        });
        result = await page.evaluate(() => window.__packCheck);
      } catch (e) {
        result = { ok: false, error: `no result: ${e.message}` };
      }
      if (result.ok !== true || errors.length > 0) {
        problem(`chromium (${tool} bundle): ${result.error ?? ""} ${errors.join("; ")}`);
      } else if (!result.crossOriginIsolated || result.worker.requests !== 5000) {
        problem(`chromium (${tool} bundle): unexpected result ${JSON.stringify(result)}`);
      } else {
        const { blk, contract, worker } = result;
        console.log(
          `  ${tool}: ${result.entries} entries loaded; blk ${blk.split.bytes} B round trips on split and packed rings (capacity ${blk.split.capacity}); ` +
            `contract ${contract.passed}/${contract.checks} checks; worker device served ${worker.served} requests, ${worker.interrupts} interrupts`,
        );
      }
      await page.close();
    }
  } finally {
    await browser.close();
    server.close();
  }
}

// ---------------------------------------------------------------------------------------------
step("changeset version, dry run on a throw-away copy");
{
  const copy = join(work, "changeset-dry-run");
  mkdirSync(copy);
  for (const f of ["package.json", "pnpm-workspace.yaml", ".changeset"]) {
    cpSync(join(root, f), join(copy, f), { recursive: true });
  }
  const privates = [];
  for (const group of ["packages", "tools"]) {
    for (const d of readdirSync(join(root, group))) {
      const manifest = join(root, group, d, "package.json");
      if (!existsSync(manifest)) continue;
      mkdirSync(join(copy, group, d), { recursive: true });
      cpSync(manifest, join(copy, group, d, "package.json"));
      const j = JSON.parse(readFileSync(manifest, "utf8"));
      if (j.private === true)
        privates.push({ dir: `${group}/${d}`, name: j.name, version: j.version });
    }
  }
  const git = (args) =>
    run("git", ["-c", "user.name=pack-check", "-c", "user.email=pack-check@localhost", ...args], {
      cwd: copy,
    });
  await git(["init", "-q"]);
  await git(["add", "-A"]);
  await git(["commit", "-qm", "dry run"]);
  const r = await run(join(root, "node_modules", ".bin", "changeset"), ["version"], { cwd: copy });
  if (r.code !== 0) {
    problem(`changeset version failed:\n${r.out}`);
  } else {
    const after = new Map();
    for (const p of packages) {
      const j = JSON.parse(readFileSync(join(copy, "packages", p.short, "package.json"), "utf8"));
      after.set(p.json.name, j.version);
      const [maj, min, pat] = j.version.split(".").map(Number);
      const [cmaj, cmin, cpat] = p.json.version.split(".").map(Number);
      const newer = maj > cmaj || (maj === cmaj && (min > cmin || (min === cmin && pat > cpat)));
      if (!/^\d+\.\d+\.\d+$/.test(j.version) || !newer) {
        problem(
          `changeset: ${p.json.name} would be released as ${j.version} (now ${p.json.version})`,
        );
      } else if (p.json.version === "0.0.0" && maj === 0 && min === 0) {
        problem(
          `changeset: ${p.json.name}'s first release would be ${j.version}, not 0.1.0 or more`,
        );
      }
    }
    for (const t of privates) {
      const j = JSON.parse(readFileSync(join(copy, t.dir, "package.json"), "utf8"));
      if (j.version !== t.version)
        problem(`changeset: the private ${t.name} would change to ${j.version}`);
    }
    console.log(
      `  ${[...after].map(([n, v]) => `${n.replace("@virtio-ts/", "")} ${v}`).join(", ")}`,
    );
    // What pnpm pack publishes for them: workspace:^ becomes ^<new version> (step 2 checks that
    // substitution on the current versions), so every internal range must stay workspace:^.
    for (const p of packages) {
      const j = JSON.parse(readFileSync(join(copy, "packages", p.short, "package.json"), "utf8"));
      for (const [dep, range] of Object.entries(j.dependencies ?? {})) {
        if (after.has(dep) && range !== "workspace:^") {
          problem(`changeset: ${p.json.name} would depend on ${dep}@${range}, not workspace:^`);
        }
      }
    }
  }
}

finish();

function finish() {
  const secs = ((Date.now() - started) / 1000).toFixed(1);
  if (keep) console.log(`\npack-check: kept ${work}`);
  else rmSync(work, { recursive: true, force: true });
  if (problems.length > 0) {
    console.log(`\npack-check: ${problems.length} problem(s) in ${secs} s:`);
    for (const p of problems) console.log(`  - ${p.split("\n")[0]}`);
    process.exit(1);
  }
  console.log(
    `\npack-check: every package packs, installs, bundles and runs outside the workspace (${secs} s)`,
  );
  process.exit(0);
}
