// balloon bench: what a migration must copy of a Linux guest (v86, 256 MiB of RAM, our devices
// over virtio-pci), before and after the memory balloon. The guest writes 100 MiB of file data
// into its page cache and deletes it again (memory it used and freed: its contents stay in
// RAM), then the host snapshots guest RAM:
//   plain          a boot without a balloon;
//   reported       a boot with BalloonDevice and free page reporting: Linux reported its free
//                  4 MiB blocks and the device zeroed them before acknowledging;
//   + inflated     the same guest after the host raised the balloon target by 64 MiB.
// Each snapshot is encoded with a simple RAM format (a bitmap of the pages sent, their bytes,
// the balloon's own state from BalloonDevice.saveState): pages in the balloon are skipped
// without being read (the guest may not use them until it deflates them, and MUST_TELL_HOST is
// negotiated), all-zero pages cost one bit. "raw" copies every byte. Bytes to copy and the
// encode time (median of 5, on a copy of RAM taken while the emulator was paused) are printed
// beside the plain guest's in the same run; a decode of each encoding is checked against RAM.
import { performance } from "node:perf_hooks";
import { BalloonDevice } from "@virtio-ts/devices";
import { acquireGuestSlot } from "@virtio-ts/interop";
import { startLinux } from "@virtio-ts/linux";

const MIB = 1 << 20;
const RAM = 256 * MIB;
const PAGE = 4096;
const PAGES = RAM / PAGE;
const HEADER = 16;
const REPS = 5;

/** One snapshot: RAM as it was, and the balloon's pages and state at that moment. */
interface Snapshot {
  readonly name: string;
  readonly ram: Uint8Array;
  /** Pages in the balloon (skipped without reading). */
  readonly inflated: Uint8Array;
  /** `BalloonDevice.saveState()` bytes (empty without a balloon). */
  readonly device: Uint8Array;
}

/** What an encoding costs. */
interface Cost {
  readonly pagesSent: number;
  readonly zeroPages: number;
  readonly skipped: number;
  readonly bytes: number;
  readonly ms: number;
}

/** Whether page `p` of `words` (the RAM as 32-bit words) is all zeros. */
function isZero(words: Uint32Array, p: number): boolean {
  const start = p * (PAGE / 4);
  const end = start + PAGE / 4;
  for (let i = start; i < end; i++) if (words[i] !== 0) return false;
  return true;
}

/**
 * Encode `s`: header, a bitmap of the pages sent, their bytes, the device state. Pages in the
 * balloon are not read; all-zero pages are left out (the destination starts from zeroed RAM).
 */
function encode(s: Snapshot): { out: Uint8Array; cost: Omit<Cost, "ms"> } {
  const words = new Uint32Array(s.ram.buffer, s.ram.byteOffset, s.ram.byteLength / 4);
  const bitmap = new Uint8Array(PAGES / 8);
  let sent = 0;
  let zero = 0;
  let skipped = 0;
  for (let p = 0; p < PAGES; p++) {
    if (s.inflated[p] === 1) {
      skipped++;
    } else if (isZero(words, p)) {
      zero++;
    } else {
      bitmap[p >> 3]! |= 1 << (p & 7);
      sent++;
    }
  }
  const out = new Uint8Array(HEADER + bitmap.length + sent * PAGE + s.device.length);
  const v = new DataView(out.buffer);
  v.setUint32(0, 0x4d415242, true); // "BRAM"
  v.setUint32(4, PAGES, true);
  v.setUint32(8, sent, true);
  v.setUint32(12, s.device.length, true);
  out.set(bitmap, HEADER);
  let at = HEADER + bitmap.length;
  for (let p = 0; p < PAGES; p++) {
    if ((bitmap[p >> 3]! & (1 << (p & 7))) === 0) continue;
    out.set(s.ram.subarray(p * PAGE, (p + 1) * PAGE), at);
    at += PAGE;
  }
  out.set(s.device, at);
  return { out, cost: { pagesSent: sent, zeroPages: zero, skipped, bytes: out.length } };
}

/** Decode into fresh RAM and compare with the snapshot (pages in the balloon are don't-care). */
function verify(s: Snapshot, enc: Uint8Array): void {
  const ram = new Uint8Array(RAM);
  const bitmap = enc.subarray(HEADER, HEADER + PAGES / 8);
  let at = HEADER + PAGES / 8;
  for (let p = 0; p < PAGES; p++) {
    if ((bitmap[p >> 3]! & (1 << (p & 7))) === 0) continue;
    ram.set(enc.subarray(at, at + PAGE), p * PAGE);
    at += PAGE;
  }
  for (let p = 0; p < PAGES; p++) {
    if (s.inflated[p] === 1) continue;
    const a = s.ram.subarray(p * PAGE, (p + 1) * PAGE);
    const b = ram.subarray(p * PAGE, (p + 1) * PAGE);
    if (Buffer.compare(a, b) !== 0) throw new Error(`${s.name}: page ${p} differs after decode`);
  }
}

function measure(s: Snapshot): Cost {
  const times: number[] = [];
  let last: ReturnType<typeof encode> | undefined;
  for (let i = 0; i < REPS; i++) {
    const t0 = performance.now();
    last = encode(s);
    times.push(performance.now() - t0);
  }
  verify(s, last!.out);
  times.sort((a, b) => a - b);
  return { ...last!.cost, ms: times[Math.floor(times.length / 2)]! };
}

/** The raw copy: every byte of RAM, plus the device state. */
function measureRaw(s: Snapshot): Cost {
  const times: number[] = [];
  let len = 0;
  for (let i = 0; i < REPS; i++) {
    const t0 = performance.now();
    const out = new Uint8Array(RAM + s.device.length);
    out.set(s.ram);
    out.set(s.device, RAM);
    len = out.length;
    times.push(performance.now() - t0);
  }
  times.sort((a, b) => a - b);
  return {
    pagesSent: PAGES,
    zeroPages: 0,
    skipped: 0,
    bytes: len,
    ms: times[Math.floor(times.length / 2)]!,
  };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The guest's workload: 100 MiB of file data written, then deleted; then the host's steps. */
const SCRIPT = [
  "exec 3<>/dev/hvc0",
  'ask() { echo "$1" >&3; read -r reply <&3; echo "step $1: $reply"; }',
  "yes 0123456789abcdef | head -c 1048576 > /tmp/1m",
  "cat $(for i in $(seq 100); do echo /tmp/1m; done) > /tmp/big",
  "rm /tmp/big /tmp/1m",
  "ask freed",
  "ask inflate",
].join("\n");

/** Boot the guest, run the workload, and take the snapshots the host steps ask for. */
async function run(withBalloon: boolean): Promise<Snapshot[]> {
  const balloon = withBalloon ? new BalloonDevice({ ram: RAM }) : undefined;
  const snaps: Snapshot[] = [];
  let reports = 0;
  const quiet = async (ms: number) => {
    // Page reporting runs 2 s after a free; wait until no report came for `ms` (at most 120 s).
    let seen = -1;
    let since = Date.now();
    for (const end = Date.now() + 120_000; Date.now() < end; await sleep(100)) {
      reports = balloon?.stats.pagesReported ?? 0;
      if (reports !== seen) {
        seen = reports;
        since = Date.now();
      } else if (Date.now() - since > ms) {
        return;
      }
    }
  };
  const release = await acquireGuestSlot();
  try {
    const g = await startLinux({
      command: SCRIPT,
      timeoutSeconds: 600,
      balloons: balloon === undefined ? [] : [balloon],
      onConsoleLine: (line) => {
        void (async () => {
          const snap = (name: string) => {
            const ram = g.guestMemory()!.slice(0, RAM).slice();
            const inflated = new Uint8Array(PAGES);
            balloon?.forEachInflatedRun((gpa, bytes) =>
              inflated.fill(1, gpa / PAGE, (gpa + bytes) / PAGE),
            );
            snaps.push({ name, ram, inflated, device: balloon?.saveState() ?? new Uint8Array(0) });
          };
          if (line === "freed") {
            await quiet(withBalloon ? 8000 : 3000);
            snap(withBalloon ? "page reporting" : "plain guest (no balloon)");
            g.sendConsole("ok\n");
          } else if (line === "inflate") {
            if (balloon !== undefined) {
              balloon.setTarget((64 * MIB) / PAGE);
              for (let i = 0; i < 1200 && balloon.actual !== balloon.target; i++) await sleep(50);
              snap("page reporting + 64 MiB inflated");
            }
            g.sendConsole("ok\n");
          }
        })();
      },
    });
    const r = await g.result;
    if (r.end !== "exit" || r.exitCode !== 0) {
      throw new Error(`the guest ended with ${r.end} ${r.exitCode}:\n${r.lastLines.join("\n")}`);
    }
  } finally {
    release();
  }
  return snaps;
}

const mib = (n: number) => `${(n / MIB).toFixed(1)} MiB`;

/**
 * Boot the guest twice (without and with a balloon), snapshot RAM after the workload, and print
 * bytes to copy and encode time per case beside the plain guest.
 */
export async function balloonBench(): Promise<void> {
  console.log(
    "\nballoon: migration cost of a 256 MiB Linux guest in v86 (100 MiB written and freed)",
  );
  const plain = await run(false);
  const ballooned = await run(true);
  const base = plain[0]!;
  const rows: [string, Cost][] = [
    [`${base.name}, raw copy`, measureRaw(base)],
    [`${base.name}, zero pages elided`, measure(base)],
    ...ballooned.map((s): [string, Cost] => [`${s.name}, zero pages elided`, measure(s)]),
  ];
  const ref = rows[1]![1];
  console.log(
    `${"case".padEnd(56)} ${"pages sent".padStart(10)} ${"zero".padStart(7)} ${"skipped".padStart(8)} ${"bytes to copy".padStart(14)} ${"vs plain".padStart(9)} ${"encode".padStart(9)} ${"vs plain".padStart(9)}`,
  );
  for (const [name, c] of rows) {
    console.log(
      `${name.padEnd(56)} ${String(c.pagesSent).padStart(10)} ${String(c.zeroPages).padStart(7)} ${String(c.skipped).padStart(8)} ${mib(c.bytes).padStart(14)} ${(c.bytes / ref.bytes).toFixed(2).padStart(9)} ${`${c.ms.toFixed(1)} ms`.padStart(9)} ${(c.ms / ref.ms).toFixed(2).padStart(9)}`,
    );
  }
  const dev = ballooned.at(-1)?.device.length ?? 0;
  console.log(
    `(device state: BalloonDevice.saveState() = ${dev} bytes, inside "bytes to copy"; encode: median of ${REPS}, on a copy of RAM)`,
  );
}
