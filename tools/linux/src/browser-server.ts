import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { createServer, type Server } from "node:http";
import { createRequire } from "node:module";
import type { AddressInfo } from "node:net";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { findGuestAssets, type GuestAssets } from "./assets.js";
import { KERNEL_CMDLINE } from "./guest.js";
import { buildGuestInitramfs } from "./initramfs.js";

/** Options of {@link serveBrowserLinux}. */
export interface BrowserServerOptions {
  /** Guest assets (default {@link findGuestAssets}). */
  readonly assets?: GuestAssets;
  /** TCP port on 127.0.0.1 (default 8086; 0 picks a free one). */
  readonly port?: number;
  /** Command the guest runs, then powers off; undefined: an interactive shell in the page. */
  readonly command?: string;
  /** Disk image size in bytes (default 16 MiB). */
  readonly diskBytes?: number;
  /** Guest RAM in MiB (default 128). */
  readonly memoryMiB?: number;
}

/** A running page server. */
export interface BrowserServer {
  /** The page's address. */
  readonly url: string;
  /** The text at the start of the disk image (`virtio-ts browser disk <random hex>`). */
  readonly diskText: string;
  /** Stop serving. */
  close(): Promise<void>;
}

/** The response headers that make the page cross-origin isolated (SharedArrayBuffer). */
export const ISOLATION_HEADERS: Readonly<Record<string, string>> = {
  "Cross-Origin-Opener-Policy": "same-origin",
  "Cross-Origin-Embedder-Policy": "require-corp",
  "Cross-Origin-Resource-Policy": "same-origin",
};

const HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>virtio-ts: Linux in a browser tab</title>
<link rel="stylesheet" href="/xterm.css">
<style>
  body { font: 14px system-ui, sans-serif; margin: 16px; background: #f6f6f6; }
  h1 { font-size: 18px; margin: 0 0 8px; }
  #status { margin: 8px 0; font-family: ui-monospace, monospace; }
  #term { display: inline-block; padding: 6px; background: #000; }
</style>
</head>
<body>
<h1>Debian i686 in v86, on virtio-ts devices (virtio-blk over a MemoryDisk, virtio-net on an in-page switch)</h1>
<div id="status">loading</div>
<div id="term"></div>
<script type="module" src="/page.js"></script>
</body>
</html>
`;

/**
 * The page's JavaScript: `src/browser/page.ts` bundled by esbuild for the browser. Packages
 * whose root entry also exports Node-only code are bundled from their browser-safe part:
 * `@virtio-ts/interop` from `browser.ts` (its root imports `node:fs` / `node:net`); everything
 * else, the browser-safe roots of backend-disk and backend-net included, resolves through the
 * packages' `source` export condition.
 */
export async function bundlePage(): Promise<string> {
  const { build } = await import("esbuild");
  const here = dirname(fileURLToPath(import.meta.url));
  const root = join(here, "..", "..", "..");
  const narrow: Record<string, string> = {
    "@virtio-ts/interop": join(root, "tools/interop/src/browser.ts"),
  };
  const r = await build({
    entryPoints: [join(here, "..", "src", "browser", "page.ts")],
    bundle: true,
    write: false,
    format: "esm",
    platform: "browser",
    target: "es2022",
    conditions: ["source"],
    logLevel: "silent",
    plugins: [
      {
        name: "narrow-entries",
        setup(b) {
          b.onResolve({ filter: /^@virtio-ts\/interop$/ }, (a) => ({
            path: narrow[a.path]!,
          }));
          b.onResolve({ filter: /^node:/ }, (a) => ({
            errors: [{ text: `${a.path} imported by ${a.importer}: not for the browser` }],
          }));
        },
      },
    ],
  });
  return r.outputFiles[0]!.text;
}

/**
 * Serve the browser page of `pnpm linux --browser` on 127.0.0.1 with COOP/COEP: the page, its
 * bundle, v86, SeaBIOS, the kernel, an initramfs built for `command`, and a disk image whose
 * first bytes are {@link BrowserServer.diskText}.
 * @param options - port, command, sizes
 * @throws MissingAssetError when the kernel, BusyBox, SeaBIOS or v86 is missing
 */
export async function serveBrowserLinux(
  options: BrowserServerOptions = {},
): Promise<BrowserServer> {
  const assets = options.assets ?? findGuestAssets();
  const js = await bundlePage();
  const initrd = buildGuestInitramfs({
    assets,
    ...(options.command !== undefined ? { command: options.command } : {}),
  });
  const diskText = `virtio-ts browser disk ${randomBytes(6).toString("hex")}`;
  const disk = Buffer.alloc(options.diskBytes ?? 16 * 1024 * 1024);
  disk.write(`${diskText}\n`, 0, "latin1");
  const xtermCss = join(
    dirname(createRequire(import.meta.url).resolve("@xterm/xterm/package.json")),
    "css",
    "xterm.css",
  );
  const config = {
    v86Module: "/v86/libv86.mjs",
    v86Wasm: "/v86/v86.wasm",
    bios: "/bios.bin",
    vgaBios: "/vgabios.bin",
    kernel: "/kernel",
    initrd: "/initrd",
    disk: "/disk.img",
    cmdline: `${KERNEL_CMDLINE} quiet`,
    memoryBytes: (options.memoryMiB ?? 128) * 1024 * 1024,
  };
  const files: Record<string, { type: string; body: () => Uint8Array | string }> = {
    "/": { type: "text/html; charset=utf-8", body: () => HTML },
    "/page.js": { type: "text/javascript", body: () => js },
    "/config.json": { type: "application/json", body: () => JSON.stringify(config) },
    "/xterm.css": { type: "text/css", body: () => readFileSync(xtermCss) },
    "/v86/libv86.mjs": { type: "text/javascript", body: () => readFileSync(assets.v86Module) },
    "/v86/v86.wasm": { type: "application/wasm", body: () => readFileSync(assets.v86Wasm) },
    "/bios.bin": { type: "application/octet-stream", body: () => readFileSync(assets.bios) },
    "/vgabios.bin": { type: "application/octet-stream", body: () => readFileSync(assets.vgaBios) },
    "/kernel": { type: "application/octet-stream", body: () => readFileSync(assets.kernel) },
    "/initrd": { type: "application/octet-stream", body: () => initrd },
    "/disk.img": { type: "application/octet-stream", body: () => disk },
  };
  const server: Server = createServer((req, res) => {
    const path = new URL(req.url ?? "/", "http://x").pathname;
    const f = files[path];
    if (f === undefined || (req.method !== "GET" && req.method !== "HEAD")) {
      res.writeHead(404, { "Content-Type": "text/plain", ...ISOLATION_HEADERS });
      res.end("not found\n");
      return;
    }
    const body = f.body();
    res.writeHead(200, {
      "Content-Type": f.type,
      "Content-Length": typeof body === "string" ? Buffer.byteLength(body) : body.byteLength,
      "Cache-Control": "no-store",
      ...ISOLATION_HEADERS,
    });
    res.end(req.method === "HEAD" ? undefined : body);
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(options.port ?? 8086, "127.0.0.1", () => resolve());
  });
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}/`,
    diskText,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
