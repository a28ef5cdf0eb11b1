// `pnpm linux` as a user runs it (the built CLI, tools/linux/dist/main.js): the issue's
// done-when command, and the clear endings: panic, timeout, missing assets.
import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { acquireGuestSlot } from "@virtio-ts/interop";
import { afterAll, describe, expect, it } from "vitest";
import {
  buildGuestInitramfs,
  DEFAULT_DISK_SIZE,
  DEFAULT_DISK_TEXT,
  findGuestAssets,
  GUEST_MODULES,
  initScript,
} from "../src/index.js";

const MAIN = fileURLToPath(new URL("../dist/main.js", import.meta.url));
const empty = mkdtempSync(join(tmpdir(), "linux-cli-"));
afterAll(() => rmSync(empty, { recursive: true, force: true }));

/** Run the CLI in a guest slot; resolves with its exit code and output. */
async function cli(args: string[], env: NodeJS.ProcessEnv = process.env) {
  const release = await acquireGuestSlot();
  try {
    return await new Promise<{ code: number; stdout: string; stderr: string }>((resolve) => {
      execFile(
        process.execPath,
        [MAIN, ...args],
        { env, maxBuffer: 16 << 20 },
        (err, stdout, stderr) => {
          const code = err === null ? 0 : typeof err.code === "number" ? err.code : -1;
          resolve({ code, stdout, stderr });
        },
      );
    });
  } finally {
    release();
  }
}

describe("pnpm linux", () => {
  it("prints the four device IDs, the default image's md5 and two ping replies for the issue's command, and exits 0", async () => {
    const r = await cli([
      "--run",
      "cat /sys/bus/virtio/devices/*/device; md5sum /dev/vda; ping -c 2 10.0.2.2",
    ]);
    expect(r.code, r.stderr).toBe(0);
    const lines = r.stdout.trim().split("\n");
    expect(lines.slice(0, 4).sort()).toEqual(["0x0001", "0x0002", "0x0003", "0x0004"]);
    const img = Buffer.alloc(DEFAULT_DISK_SIZE);
    img.write(DEFAULT_DISK_TEXT, 0, "latin1");
    expect(lines[4]).toBe(`${createHash("md5").update(img).digest("hex")}  /dev/vda`);
    expect(lines.filter((l) => /^64 bytes from 10\.0\.2\.2: seq=\d/.test(l))).toHaveLength(2);
    // Only the command's output on stdout: no kernel boot log.
    expect(r.stdout).not.toMatch(/\[\s*\d+\.\d+\]/);
    expect(r.stderr).toMatch(/^boot: \d+\.\d s to a shell/m);
    for (const name of ["blk", "net", "console", "rng"])
      expect(r.stderr).toMatch(new RegExp(`^${name} +0x`, "m"));
  }, 300_000);

  it("ends a guest kernel panic with exit 1 and the last 30 serial lines", async () => {
    const r = await cli(["--run", "echo c > /proc/sysrq-trigger"]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/the guest kernel panicked; last 30 serial lines:/);
    expect(r.stderr).toMatch(/Kernel panic - not syncing/);
  }, 300_000);

  it("ends a timeout with exit 124, naming --timeout, and the last serial lines", async () => {
    const r = await cli(["--timeout", "4", "--run", "true"]);
    expect(r.code).toBe(124);
    expect(r.stderr).toMatch(/timed out after 4 s \(--timeout\); last 30 serial lines:/);
  }, 120_000);

  it("names the missing guest kernel, its package and the fetch command (exit 2)", async () => {
    const r = await cli(["--run", "true"], { ...process.env, VIRTIO_TS_LINUX_ASSETS: empty });
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(
      /package linux-image-686:i386\); fetch it with: bash scripts\/linux-guest\.sh/,
    );
  }, 60_000);
});

describe("findGuestAssets", () => {
  it("names seabios when the BIOS images are missing", () => {
    expect(() => findGuestAssets({ biosDir: empty })).toThrow(
      /bios\.bin is missing \(package seabios\)/,
    );
  });

  it("names the v86 npm package and pnpm install when v86 cannot be resolved", async () => {
    // In a child without NODE_PATH (pnpm sets it for scripts, and it would find v86 anyway).
    const env = { ...process.env };
    delete env.NODE_PATH;
    const assets = new URL("../dist/assets.js", import.meta.url).href;
    const code = `import(${JSON.stringify(assets)}).then((m) => { try { m.findGuestAssets({ resolveFrom: ${JSON.stringify(join(empty, "x.js"))} }); } catch (e) { console.log(e.name, e.message); } })`;
    const out = await new Promise<string>((resolve) =>
      execFile(process.execPath, ["-e", code], { env }, (_e, stdout) => resolve(stdout)),
    );
    expect(out).toMatch(/^MissingAssetError .*v86 .*package v86@0\.5\.462 \(npm\).*pnpm install/);
  });
});

describe("the guest's /init", () => {
  it("loads virtio_pci after its dependencies and every requested module once", () => {
    const assets = findGuestAssets();
    const gz = buildGuestInitramfs({ assets, command: "true" });
    expect(gz.length).toBeGreaterThan(1_000_000);
    expect(GUEST_MODULES).toContain("virtio-rng");
  });

  it("configures eth0 as 10.0.2.15/24, runs the command, syncs, reports its status and powers off", () => {
    const s = initScript(["virtio", "virtio_pci"], { assets: findGuestAssets(), command: "x" });
    expect(s).toMatch(/ip addr add 10\.0\.2\.15\/24 dev eth0/);
    expect(s.indexOf("/bin/sh /run.sh")).toBeLessThan(s.indexOf("sync"));
    expect(s.indexOf("sync")).toBeLessThan(s.indexOf("@@VIRTIO-TS-EXIT $status@@"));
    expect(s.trim().endsWith("poweroff -f")).toBe(true);
  });
});
