import { execFileSync } from "node:child_process";
import { cpSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { gunzipSync } from "node:zlib";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  buildInitramfs,
  cpioNewc,
  type KernelInfo,
  moduleDepends,
  requireTools,
  resolveModules,
} from "../src/index.js";

let kernel: KernelInfo;
const cacheDir = mkdtempSync(join(tmpdir(), "interop-initramfs-test-"));

beforeAll(() => {
  // No QEMU needed here, but the kernel modules and BusyBox are; `cpio` is the independent reader.
  kernel = requireTools(["cpio"]);
});

afterAll(() => rmSync(cacheDir, { recursive: true, force: true }));

/** `cpio -itv` (GNU cpio) on an archive: one line per member, `mode ... name [-> target]`. */
function listWithCpio(archive: Uint8Array): string[] {
  return execFileSync("cpio", ["-itv", "--quiet"], { input: archive })
    .toString("utf8")
    .trim()
    .split("\n");
}

describe("cpioNewc", () => {
  it("writes an archive GNU cpio lists with the right types, modes, sizes and link targets", () => {
    const archive = cpioNewc([
      { kind: "dir", path: "/bin" },
      { kind: "file", path: "/bin/hello", data: "hi there\n", mode: 0o755 },
      { kind: "symlink", path: "/bin/sh", target: "busybox" },
      { kind: "chardev", path: "/console", major: 5, minor: 1 },
    ]);
    const lines = listWithCpio(archive);
    expect(lines).toHaveLength(4);
    expect(lines[0]).toMatch(/^drwxr-xr-x .* bin$/);
    expect(lines[1]).toMatch(/^-rwxr-xr-x .* 9 .* bin\/hello$/);
    expect(lines[2]).toMatch(/^lrwxrwxrwx .* bin\/sh -> busybox$/);
    expect(lines[3]).toMatch(/^crw------- .* 5,\s+1 .* console$/);
  });

  it("pads every header and body to 4 bytes and ends with the TRAILER!!! member", () => {
    const archive = cpioNewc([{ kind: "file", path: "/a", data: "12345" }]);
    // header 110 + "a\0" = 112 (aligned), data 5 + 3 pad, trailer 110 + 11 + 3 pad.
    expect(archive.length).toBe(112 + 8 + 124);
    const text = new TextDecoder().decode(archive);
    expect(text.slice(0, 6)).toBe("070701");
    expect(text.slice(112, 117)).toBe("12345");
    expect(text.slice(120, 126)).toBe("070701");
    expect(text.slice(230, 240)).toBe("TRAILER!!!");
  });

  it("rejects a relative path", () => {
    expect(() => cpioNewc([{ kind: "dir", path: "bin" }])).toThrow(RangeError);
  });
});

describe("resolveModules", () => {
  it("orders virtio_net after everything it depends on, as modules.dep says", () => {
    const names = resolveModules(kernel.modulesDir, ["virtio_pci", "virtio_net"]).map(
      (m) => m.name,
    );
    for (const [before, after] of [
      ["virtio_ring", "virtio"],
      ["virtio", "virtio_pci"],
      ["virtio_pci_modern_dev", "virtio_pci"],
      ["failover", "net_failover"],
      ["net_failover", "virtio_net"],
      ["virtio_ring", "virtio_net"],
    ] as const) {
      expect(names.indexOf(before), `${before} before ${after} in ${names}`).toBeGreaterThanOrEqual(
        0,
      );
      expect(names.indexOf(before)).toBeLessThan(names.indexOf(after));
    }
    expect(new Set(names).size).toBe(names.length);
  });

  it("names a module that does not exist", () => {
    expect(() => resolveModules(kernel.modulesDir, ["no_such_module"])).toThrow(/no_such_module/);
  });

  it("orders modules after their dependencies from their own depends= fields when depmod never ran", () => {
    const fromDep = resolveModules(kernel.modulesDir, ["virtio_pci", "virtio_net"]);
    // A tree as `dpkg -x` leaves it: the same .ko files at the same paths, no modules.dep.
    const tree = join(cacheDir, "no-depmod");
    for (const m of fromDep) {
      const rel = m.path.slice(kernel.modulesDir.length + 1);
      mkdirSync(join(tree, rel, ".."), { recursive: true });
      cpSync(m.path, join(tree, rel));
    }
    const order = resolveModules(tree, ["virtio_pci", "virtio_net"]).map((m) => m.name);
    expect([...order].sort()).toEqual(fromDep.map((m) => m.name).sort());
    // Every edge of modules.dep (direct dependencies) holds in the order found without it.
    const dep = readFileSync(join(kernel.modulesDir, "modules.dep"), "utf8");
    for (const m of fromDep) {
      const line = dep
        .split("\n")
        .find((l) => l.includes(":") && m.path.endsWith(l.slice(0, l.indexOf(":"))));
      const needs = (line?.split(":")[1] ?? "")
        .trim()
        .split(/\s+/)
        .filter((s) => s !== "");
      for (const n of needs) {
        const name = n.slice(n.lastIndexOf("/") + 1, -3).replaceAll("-", "_");
        expect(order.indexOf(name), `${name} before ${m.name}`).toBeLessThan(order.indexOf(m.name));
      }
    }
    expect(() => resolveModules(tree, ["virtio_blk"])).toThrow(/virtio_blk.*no modules\.dep/);
  });

  it("reads depends= only at the start of a modinfo string", () => {
    const enc = new TextEncoder();
    const ko = enc.encode("\0xdepends=bogus\0license=GPL\0depends=virtio,virtio-ring\0");
    expect(moduleDepends(ko)).toEqual(["virtio", "virtio_ring"]);
    expect(moduleDepends(enc.encode("\0depends=\0"))).toEqual([]);
  });
});

describe("buildInitramfs", () => {
  it("packs BusyBox, the modules in load order, /init and the script, and caches by content", () => {
    const script = `echo cache-test-${process.pid}\n`;
    const first = buildInitramfs({ script, modules: ["virtio_mmio"], kernel, cacheDir });
    const again = buildInitramfs({ script, modules: ["virtio_mmio"], kernel, cacheDir });
    const other = buildInitramfs({ script: `${script}true\n`, kernel, cacheDir });
    expect(first.cached).toBe(false);
    expect(again.cached).toBe(true);
    expect(again.path).toBe(first.path);
    expect(other.path).not.toBe(first.path);
    expect(first.modules).toEqual(["virtio_ring", "virtio", "virtio_mmio"]);

    const archive = gunzipSync(readFileSync(first.path));
    const names = listWithCpio(archive).map((l) =>
      l
        .replace(/ -> .*$/, "")
        .split(/\s+/)
        .pop(),
    );
    expect(names).toEqual(
      expect.arrayContaining([
        "bin/busybox",
        "bin/sh",
        "dev/console",
        "init",
        "test.sh",
        "lib/modules/virtio_mmio.ko",
      ]),
    );
    const init = execFileSync("cpio", ["-i", "--quiet", "--to-stdout", "init"], {
      input: archive,
    }).toString();
    const order = [...init.matchAll(/insmod \/lib\/modules\/(\w+)\.ko/g)].map((m) => m[1]);
    expect(order).toEqual(["virtio_ring", "virtio", "virtio_mmio"]);
    const test = execFileSync("cpio", ["-i", "--quiet", "--to-stdout", "test.sh"], {
      input: archive,
    }).toString();
    expect(test).toBe(script);
  });
});
