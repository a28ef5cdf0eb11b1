// `pnpm lab linux`'s pieces that run without a guest: the in-guest I/O tool (built by gcc -m32
// and run on this host, which runs i386 binaries), and the tables, comparisons and charts made
// from rows. The v86 rig itself is tested in tools/linux (lab-rig.test.ts).
import { spawnSync } from "node:child_process";
import { createSocket } from "node:dgram";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import {
  buildLabIo,
  compareLinuxRows,
  formatLinuxTables,
  type LinuxRow,
  linuxCharts,
} from "../src/linux.js";

const dir = mkdtempSync(join(tmpdir(), "virtio-ts-lab-io-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function labIo(): string {
  const path = join(dir, "lab-io");
  writeFileSync(path, buildLabIo(dir), { mode: 0o755 });
  return path;
}

function run(bin: string, args: string[]): string {
  const r = spawnSync(bin, args, { encoding: "utf8" });
  if (r.error !== undefined) {
    throw new Error(
      `cannot run the i386 lab-io on this host (${r.error.message}): the kernel needs IA32 emulation`,
    );
  }
  return r.stdout;
}

describe("lab-io, the in-guest I/O tool", () => {
  it("is built by gcc -m32 into a static i386 ELF executable", () => {
    const b = buildLabIo(dir);
    expect([...b.subarray(0, 4)]).toEqual([0x7f, 0x45, 0x4c, 0x46]);
    expect(b[4]).toBe(1); // ELFCLASS32
    expect(b[18]! | (b[19]! << 8)).toBe(3); // EM_386
  });

  it("reads the requested number of 4 KiB random blocks with O_DIRECT and reports them between its begin and end lines", () => {
    const bin = labIo();
    const img = join(dir, "img");
    writeFileSync(img, Buffer.alloc(2 << 20, 7));
    const out = run(bin, ["rand", img, "4096", "20", "5", "2", "t:rand4k:1", "7"]).split("\n");
    expect(out[0]).toMatch(/^@@LAB begin t:rand4k:1 cpu \d+ \d+ \d+ \d+ \d+ \d+ \d+@@$/);
    expect(out[1]).toMatch(
      /^@@LAB end t:rand4k:1 requests=20 bytes=81920 ns=\d+ errors=0 cpu( \d+){7}@@$/,
    );
  });

  it("reads 1 MiB blocks sequentially, wrapping at the span", () => {
    const bin = labIo();
    const img = join(dir, "img1m");
    writeFileSync(img, Buffer.alloc(2 << 20));
    const out = run(bin, ["seq", img, "1048576", "5", "5", "2", "s", "1"]);
    expect(out).toMatch(/@@LAB end s requests=5 bytes=5242880 ns=\d+ errors=0/);
  });

  it("sends the requested UDP datagrams of the requested size to a host socket", async () => {
    const bin = labIo();
    const sock = createSocket("udp4");
    const sizes: number[] = [];
    sock.on("message", (m) => sizes.push(m.length));
    await new Promise<void>((r) => sock.bind(0, "127.0.0.1", r));
    const port = sock.address().port;
    const out = run(bin, ["udp", "127.0.0.1", String(port), "1000", "10", "5", "u"]);
    await new Promise((r) => setTimeout(r, 200));
    sock.close();
    expect(out).toMatch(/@@LAB end u sent=10 ns=\d+ errors=0/);
    expect(sizes.length).toBeGreaterThan(0);
    expect(sizes.every((n) => n === 1000)).toBe(true);
  });

  it("refuses a block size that is not whole sectors, with status 2", () => {
    const bin = labIo();
    const r = spawnSync(bin, ["rand", "/dev/null", "1000", "1", "1", "1", "x", "1"], {
      encoding: "utf8",
    });
    expect(r.status).toBe(2);
    expect(r.stdout).toContain("bad block size");
  });
});

const row = (over: Partial<LinuxRow>): LinuxRow => ({
  table: "disk",
  workload: "rand4k",
  device: "IDE (v86's own) /dev/sda",
  kind: "full emulation",
  requests: 1000,
  perSecond: 500,
  mbPerSecond: 2,
  rttMs: undefined,
  trapsPerRequest: 26,
  trapsPerSecond: 13000,
  irqsPerRequest: 1,
  irqsPerSecond: 500,
  guestBusy: 1,
  rounds: 3,
  ...over,
});

const rows: LinuxRow[] = [
  row({}),
  row({
    device: "virtio-blk (virtio-ts) /dev/vda",
    kind: "virtio (virtio-ts)",
    perSecond: 1000,
    trapsPerRequest: 2,
  }),
  row({
    table: "net",
    workload: "udp",
    device: "NE2000 (v86's own)",
    perSecond: 4000,
    trapsPerRequest: 400,
  }),
  row({
    table: "net",
    workload: "udp",
    device: "virtio-net (v86's own)",
    kind: "virtio (v86)",
    perSecond: 3000,
    trapsPerRequest: 2,
  }),
  row({
    table: "net",
    workload: "udp",
    device: "virtio-net (virtio-ts)",
    kind: "virtio (virtio-ts)",
    perSecond: 6000,
    trapsPerRequest: 1,
    irqsPerRequest: 0.04,
  }),
];

describe("pnpm lab linux's report", () => {
  it("prints one table per workload with each device's figures", () => {
    const t = formatLinuxTables(rows).join("\n");
    expect(t).toContain("4 KiB random reads (O_DIRECT, QD1)");
    expect(t).toMatch(/virtio-blk \(virtio-ts\) \/dev\/vda\s+1,000\s+2\.00\s+2\.0/);
    expect(t).toMatch(/NE2000 \(v86's own\)\s+4,000/);
  });

  it("compares ours with full emulation and with v86's own virtio-net in ratios", () => {
    const c = compareLinuxRows(rows).join("\n");
    expect(c).toContain(
      "virtio-ts virtio-blk does 2.00× IDE's requests/s with 0.077× its traps per request",
    );
    expect(c).toContain("against NE2000: frames/s 1.50×, traps/frame 0.0025×");
    expect(c).toContain("against v86's virtio-net: frames/s 2.00×");
  });

  it("draws one SVG bar chart per metric, with every row that has the metric", () => {
    const charts = linuxCharts(rows);
    const names = charts.map((c) => c.name);
    expect(names).toContain("requests-per-second");
    expect(names).toContain("traps-per-request");
    expect(names).not.toContain("ping-rtt-ms"); // no ping rows here
    const rps = charts.find((c) => c.name === "requests-per-second")!.svg;
    expect(rps.startsWith("<svg")).toBe(true);
    expect(rps).toContain("udp · virtio-net (virtio-ts)");
    expect(rps).toContain("rand4k · IDE (v86");
  });
});
