// Linux in a browser tab: `pnpm linux --browser`'s page boots the Debian guest in v86 inside
// Debian's Chromium (headless, driven by playwright-core) on virtio-ts devices. One boot, about
// 30–60 s of one core; one guest at a time machine-wide through the interop slot.
import { existsSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { acquireGuestSlot } from "@virtio-ts/interop";
import { chromium } from "playwright-core";
import { describe, expect, it } from "vitest";
import { ISOLATION_HEADERS, serveBrowserLinux } from "../src/index.js";
import { assetsOrFail } from "./helpers/boot.js";

const CHROMIUM = "/usr/bin/chromium";
/** Screenshots land here (gitignored). */
const ARTIFACTS = fileURLToPath(new URL("../artifacts/", import.meta.url));

interface PageState {
  phase: string;
  lines: string[];
  echoReplies: number;
  blkRequests: number;
  netFrames: number;
  error: string | undefined;
  crossOriginIsolated: boolean;
}

describe("Linux in a browser tab on virtio-ts devices", () => {
  it("boots in Chromium, reads the host's marker from /dev/vda (a MemoryDisk fetched by the page) and pings the in-page TypeScript peer", async () => {
    if (!existsSync(CHROMIUM)) {
      throw new Error(
        `${CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium, or bash scripts/test-deps.sh)`,
      );
    }
    const assets = assetsOrFail();
    const release = await acquireGuestSlot();
    const profile = mkdtempSync(join(tmpdir(), "virtio-ts-chromium-"));
    const server = await serveBrowserLinux({
      assets,
      port: 0,
      command: [
        'echo "K disk $(head -c 64 /dev/vda | head -n 1)"',
        "ping -c 3 -W 5 10.0.2.2 >/dev/null && echo K ping ok",
      ].join("\n"),
    });
    const ctx = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      args: [
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
      ],
    });
    try {
      const page = ctx.pages()[0] ?? (await ctx.newPage());
      const errors: string[] = [];
      page.on("pageerror", (e) => errors.push(e.message));
      const res = await page.goto(server.url);
      expect(res?.headers()["cross-origin-embedder-policy"]).toBe(
        ISOLATION_HEADERS["Cross-Origin-Embedder-Policy"],
      );
      await page.waitForFunction(
        () => {
          const s = (globalThis as unknown as { virtioTs?: PageState }).virtioTs;
          return (
            s !== undefined &&
            (s.phase === "off" ||
              s.phase === "failed" ||
              s.lines.some((l) => l.includes("@@VIRTIO-TS-EXIT")))
          );
        },
        undefined,
        { timeout: 100_000, polling: 500 },
      );
      const state = await page.evaluate(() => {
        const s = (globalThis as unknown as { virtioTs: PageState }).virtioTs;
        return {
          ...s,
          crossOriginIsolated: (globalThis as unknown as { crossOriginIsolated: boolean })
            .crossOriginIsolated,
        };
      });
      mkdirSync(ARTIFACTS, { recursive: true });
      const shot = join(ARTIFACTS, "linux-in-a-browser-tab.png");
      await page.screenshot({ path: shot });
      console.log(`browser test screenshot: ${shot}`);
      expect(errors).toEqual([]);
      expect(state.error).toBeUndefined();
      expect(state.crossOriginIsolated).toBe(true);
      expect(state.lines).toContain(`K disk ${server.diskText}`);
      expect(state.lines).toContain("K ping ok");
      expect(state.lines).toContain("@@VIRTIO-TS-EXIT 0@@");
      expect(state.echoReplies).toBeGreaterThanOrEqual(3);
      expect(state.blkRequests).toBeGreaterThan(0);
    } finally {
      await ctx.close();
      await server.close();
      release();
      rmSync(profile, { recursive: true, force: true });
    }
    // The budget includes waiting for the machine-wide guest slot (other guests may hold it).
  }, 600_000);
});
