// Linux 6.1's own virtio_balloon driver in v86, on our BalloonDevice over virtio-pci. One boot
// with two balloons, so both inflate semantics are seen in one run: "a" offers stats (polled
// every second by the host) and free page reporting, "b" offers DEFLATE_ON_OOM. Linux lowers
// MemTotal when it inflates only without DEFLATE_ON_OOM (fill_balloon calls
// adjust_managed_page_count(page, -1) unless the feature is negotiated); with it, ballooned
// pages stay in MemTotal and only MemFree drops. The guest script asks the host for each step on
// /dev/hvc0 and prints `K <key> <values>` lines; the host answers once the device saw the step
// through (the target reached, reporting quiet).
//
// Free page reporting (mm/page_reporting.c, Linux 6.1): a free block of order >= pageblock_order
// (here 10: 4 MiB, i686 without PAE has 4 MiB huge pages) asks for a report pass 2 s later; a pass
// runs only while the zone has more than its low watermark + 32 << order pages free (128 MiB),
// and reports every free block of at least that order not reported yet, 32 blocks per buffer.
// So the host sees 4 MiB runs, and of 100 MiB released, the 4 MiB blocks that became wholly
// free again: most of it, never a partly used block.

import { BalloonDevice } from "@virtio-ts/devices";
import { acquireGuestSlot } from "@virtio-ts/interop";
import { BalloonFeature, DeviceId } from "@virtio-ts/spec";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type LinuxResult, startLinux } from "../src/index.js";
import { assetsOrFail, checks, featureBit } from "./helpers/boot.js";

const MIB = 1 << 20;
const RAM = 256 * MIB;
const STEP_PAGES = (64 * MIB) / 4096;
const STATS_MS = 1000;
const FILE_MIB = 100;
/** Every line of the file the guest writes; a page of it holds this within its first 34 bytes. */
const MOTIF = "0123456789abcdef";
const BLOCK = 4 * MIB;

const stamps: number[] = [];
const reports: { gpa: number; bytes: number; afterMark: boolean }[] = [];
let marked = false;
let markPages = 0;
/** Pages holding the file's motif when the guest had written it (guest-physical page numbers). */
let filePages = new Set<number>();
/** Of those, how many still held it once reporting was quiet. */
let fileLeftInReported = -1;

const a = new BalloonDevice({
  ram: RAM,
  statsIntervalMs: STATS_MS,
  host: {
    stats: () => stamps.push(performance.now()),
    reported: (gpa, bytes) => reports.push({ gpa, bytes, afterMark: marked }),
  },
});
const b = new BalloonDevice({
  ram: RAM,
  deflateOnOom: true,
  statsQueue: false,
  pageReporting: false,
});

const SCRIPT = [
  "mi() { echo $(grep -E '^(MemTotal|MemFree):' /proc/meminfo | awk '{print $2}'); }",
  // Free blocks of order 10 (4 MiB, the last column) in the Normal zone, the one reported.
  "buddy() { awk '$4 == \"Normal\" { print $NF }' /proc/buddyinfo; }",
  'for d in /sys/bus/virtio/devices/*; do p=$(dirname $(readlink -f $d)); echo "K dev $(cat $d/device) $(cat $p/vendor):$(cat $p/device) $(basename $(readlink $d/driver)) $(cat $d/features)"; done',
  'echo "K order $(cat /sys/module/page_reporting/parameters/page_reporting_order)"',
  "exec 3<>/dev/hvc0",
  'ask() { echo "$1" >&3; read -r reply <&3; echo "K $1 $reply"; }',
  "ask stats-now; echo \"K memtotal $(grep MemTotal /proc/meminfo | awk '{print $2}')\"",
  'echo "K mem0 $(mi)"',
  'ask inflate-a; echo "K mem1 $(mi)"',
  'ask deflate-a; echo "K mem2 $(mi)"',
  'ask inflate-b; echo "K mem3 $(mi)"',
  'ask deflate-b; echo "K mem4 $(mi)"',
  // 100 MiB of file data in the page cache, written by one cat (each extra process would
  // leave kernel allocations scattered over the blocks the file came from).
  `yes ${MOTIF} | head -c ${MIB} > /tmp/1m`,
  `cat $(for i in $(seq ${FILE_MIB}); do echo /tmp/1m; done) > /tmp/big`,
  'echo "K memfull $(mi)"',
  "ask scan",
  'echo "K buddy-full $(buddy)"',
  "rm /tmp/big /tmp/1m",
  'echo "K memfreed $(mi)"',
  "ask report-wait",
  'echo "K buddy-end $(buddy)"',
].join("\n");

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until(cond: () => boolean, ms: number): Promise<boolean> {
  const end = Date.now() + ms;
  while (!cond() && Date.now() < end) await sleep(50);
  return cond();
}

/** Wait until no report arrived for `ms` (at most 120 s): a pass has finished. */
async function reportsQuiet(ms: number): Promise<void> {
  let seen = -1;
  let since = Date.now();
  const end = Date.now() + 120_000;
  while (Date.now() < end) {
    if (reports.length !== seen) {
      seen = reports.length;
      since = Date.now();
    } else if (Date.now() - since > ms) {
      return;
    }
    await sleep(100);
  }
}

/** Guest page numbers whose first bytes hold the motif (a page of the guest's file). */
function scan(ram: Uint8Array): Set<number> {
  const found = new Set<number>();
  const motif = Buffer.from(MOTIF);
  const buf = Buffer.from(ram.buffer, ram.byteOffset, ram.byteLength);
  for (let page = 0; page < ram.length / 4096; page++) {
    const head = buf.subarray(page * 4096, page * 4096 + 2 * MOTIF.length + 2);
    if (head.indexOf(motif) >= 0) found.add(page);
  }
  return found;
}

let r: LinuxResult;
let k: Map<string, string[]>;
const kv = (key: string) => (k.get(key)?.[0] ?? "").split(" ").map(Number);

beforeAll(async () => {
  assetsOrFail();
  const release = await acquireGuestSlot();
  try {
    const g = await startLinux({
      command: SCRIPT,
      timeoutSeconds: 600,
      balloons: [a, b],
      onConsoleLine: (line) => {
        const reply = (x: string | number) => g.sendConsole(`${x}\n`);
        const step = async (dev: BalloonDevice, pages: number) => {
          dev.setTarget(dev.target + pages);
          await until(() => dev.actual === dev.target, 120_000);
          reply(`${dev.target} ${dev.actual} ${dev.inflatedPages}`);
        };
        void (async () => {
          switch (line) {
            case "stats-now": {
              const seq = a.guestStats?.seq ?? 0;
              a.requestStats();
              await until(() => (a.guestStats?.seq ?? 0) > seq, 30_000);
              reply(`${(a.guestStats?.memTotal ?? 0) / 1024}`);
              break;
            }
            case "inflate-a":
              return step(a, STEP_PAGES);
            case "deflate-a":
              return step(a, -STEP_PAGES);
            case "inflate-b":
              return step(b, STEP_PAGES);
            case "deflate-b":
              return step(b, -STEP_PAGES);
            case "scan": {
              // The file holds the zone below the reporting watermark: no pass runs now; let
              // the ones after boot and the deflates end, then mark.
              await reportsQuiet(4000);
              markPages = a.stats.pagesReported;
              marked = true;
              filePages = scan(g.guestMemory()!.slice(0, RAM));
              reply(filePages.size);
              break;
            }
            case "report-wait": {
              await reportsQuiet(8000);
              const ram = g.guestMemory()!.slice(0, RAM);
              const left = scan(ram);
              fileLeftInReported = [...left].filter((p) => inReportedBlock(p)).length;
              reply(a.stats.pagesReported - markPages);
              break;
            }
          }
        })();
      },
    });
    r = await g.result;
  } finally {
    release();
  }
  k = checks(r.output);
}, 660_000);

afterAll(() => {
  a.setStatsInterval(0);
});

/** Whether guest page `p` lies in a block reported after the mark. */
function inReportedBlock(p: number): boolean {
  const gpa = p * 4096;
  return reports.some((x) => x.afterMark && gpa >= x.gpa && gpa < x.gpa + x.bytes);
}

describe("Linux's virtio_balloon on BalloonDevice in v86", () => {
  it("boots, runs the script and exits 0", () => {
    expect(r.end, r.lastLines.join("\n")).toBe("exit");
    expect(r.exitCode).toBe(0);
  });

  it("binds virtio_balloon to both balloons (0x1af4:0x1045) and negotiates the features each offers", () => {
    const devs = (k.get("dev") ?? [])
      .map((l) => l.split(" "))
      .filter((d) => d[0] === `0x${DeviceId.BALLOON.toString(16).padStart(4, "0")}`);
    expect(devs).toHaveLength(2);
    for (const d of devs) expect(d.slice(1, 3)).toEqual(["0x1af4:0x1045", "virtio_balloon"]);
    const withStats = devs.find((d) => featureBit(d[3]!, BalloonFeature.STATS_VQ))!;
    const withOom = devs.find((d) => featureBit(d[3]!, BalloonFeature.DEFLATE_ON_OOM))!;
    expect(featureBit(withStats[3]!, BalloonFeature.PAGE_REPORTING)).toBe(true);
    expect(featureBit(withStats[3]!, BalloonFeature.MUST_TELL_HOST)).toBe(true);
    expect(featureBit(withStats[3]!, BalloonFeature.DEFLATE_ON_OOM)).toBe(false);
    // Linux keeps PAGE_POISON only with page poisoning or init_on_free on (neither here).
    expect(featureBit(withStats[3]!, BalloonFeature.PAGE_POISON)).toBe(false);
    expect(featureBit(withOom[3]!, BalloonFeature.STATS_VQ)).toBe(false);
  });

  it("inflates by 64 MiB without DEFLATE_ON_OOM: MemTotal and MemFree both drop by 64 MiB, and deflating gives it back", () => {
    const [total0, free0] = kv("mem0");
    const [total1, free1] = kv("mem1");
    const [total2, free2] = kv("mem2");
    expect(kv("inflate-a")).toEqual([STEP_PAGES, STEP_PAGES, STEP_PAGES]);
    expect(total0! - total1!).toBe(65536);
    expect(Math.abs(free0! - free1! - 65536)).toBeLessThan(2048);
    expect(kv("deflate-a")).toEqual([0, 0, 0]);
    expect(total2).toBe(total0);
    expect(Math.abs(free2! - free0!)).toBeLessThan(2048);
  });

  it("inflates by 64 MiB with DEFLATE_ON_OOM: MemTotal stays, MemFree drops by 64 MiB, and deflating gives it back", () => {
    const [total2, free2] = kv("mem2");
    const [total3, free3] = kv("mem3");
    const [total4, free4] = kv("mem4");
    expect(kv("inflate-b")).toEqual([STEP_PAGES, STEP_PAGES, STEP_PAGES]);
    expect(total3).toBe(total2);
    expect(Math.abs(free2! - free3! - 65536)).toBeLessThan(2048);
    expect(kv("deflate-b")).toEqual([0, 0, 0]);
    expect(total4).toBe(total2);
    expect(Math.abs(free4! - free2!)).toBeLessThan(2048);
  });

  it("reports exactly the 4 MiB blocks (page_reporting_order 10) the guest's release of 100 MiB made free", () => {
    expect(kv("order")).toEqual([10]);
    const after = reports.filter((x) => x.afterMark);
    const pages = kv("report-wait")[0]!;
    expect(pages).toBe(after.reduce((n, x) => n + x.bytes / 4096, 0));
    for (const x of after) {
      expect(x.bytes).toBe(BLOCK);
      expect(x.gpa % BLOCK).toBe(0);
    }
    // The guest's own count of free 4 MiB blocks grew by what the host was told of.
    const grown = kv("buddy-end")[0]! - kv("buddy-full")[0]!;
    expect(Math.abs(after.length - grown)).toBeLessThanOrEqual(1);
    // Only wholly free blocks are reported: most of what was released, never much more.
    const released = (FILE_MIB * MIB) / 4096;
    expect(pages).toBeGreaterThanOrEqual(0.5 * released);
    expect(pages).toBeLessThanOrEqual(released + (16 * MIB) / 4096);
  });

  it("reports blocks the guest's file was in, and the host has discarded the file's data there", () => {
    expect(kv("scan")[0]).toBe(filePages.size);
    expect(filePages.size).toBeGreaterThanOrEqual((FILE_MIB * MIB) / 4096);
    const after = reports.filter((x) => x.afterMark);
    const withFile = after.filter((x) =>
      [...filePages].some((p) => p * 4096 >= x.gpa && p * 4096 < x.gpa + x.bytes),
    );
    expect(withFile.length).toBe(after.length);
    // Zeroed before the report was acknowledged; the idle guest has not reused them since.
    expect(fileLeftInReported).toBe(0);
  });

  it("sends memory statistics every second as the host asked, and their MemTotal is the guest's", () => {
    expect(kv("stats-now")[0]).toBe(kv("memtotal")[0]);
    const s = a.guestStats!;
    expect(s.memTotal).toBe(kv("mem4")[0]! * 1024);
    expect(s.memFree).toBeGreaterThan(0);
    expect(s.available).toBeGreaterThan(0);
    expect(s.unknownTags).toBe(0);
    // The steady part of the run: from the first inflate on.
    const gaps = stamps
      .slice(5)
      .map((t, i, all) => (i === 0 ? undefined : t - all[i - 1]!))
      .filter((x): x is number => x !== undefined)
      .sort((x, y) => x - y);
    expect(gaps.length).toBeGreaterThanOrEqual(10);
    const median = gaps[Math.floor(gaps.length / 2)]!;
    expect(median).toBeGreaterThan(0.9 * STATS_MS);
    expect(median).toBeLessThan(1.1 * STATS_MS);
    const mean = gaps.reduce((x, y) => x + y, 0) / gaps.length;
    expect(mean).toBeLessThan(1.25 * STATS_MS);
    expect(a.stats.statsRequests).toBeGreaterThanOrEqual(gaps.length);
  });

  it("counts the balloons' requests in the run report and no guest fault", () => {
    const names = r.devices.map((d) => d.name);
    expect(names).toEqual(["blk", "net", "console", "rng", "balloon", "balloon2"]);
    expect(r.devices.find((d) => d.name === "balloon")!.requests).toBeGreaterThan(100);
    expect(a.stats.malformed).toBe(0);
    expect(b.stats.malformed).toBe(0);
    expect(a.inflatedPages).toBe(0);
    expect(b.inflatedPages).toBe(0);
  });
});
