// Snapshot log (@virtio-ts/interpose snapshotLog) at scale: how long opening a log of 100k,
// 200k and 400k records takes, and what a write costs once the index holds that many extents.
//
// Each log is made through the API: one-sector writes at pseudo-random sectors of a 1 GiB base
// (a stub that reads zeroes), 64 in flight, so nearly every record is its own extent (the worst
// case for the index). Baselines in the same run:
// - open: reading the same file and computing CRC-32 over every byte (the least an open that
//   checks every record must do). Linear opening keeps open / read+CRC flat as the log grows;
//   before the fix (an Array.splice per record) opening took 2.4 s, 19.5 s and 113 s.
// - write: the same 2000 one-sector writes on an empty log. Before the fix a write at 400k
//   extents cost about 1.5 ms (moving the tail of one flat array).
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { crc32 } from "node:zlib";
import type { BlockBackend } from "@virtio-ts/devices";
import { snapshotLog } from "@virtio-ts/interpose/node";

/** Records in the logs measured. */
export const LOG_OPEN_SIZES = [100_000, 200_000, 400_000] as const;
const BASE_SECTORS = 1 << 21;
const WRITES = 2000;

/** A read-only base of zeroes: only its capacity matters here. */
const base: BlockBackend = {
  capacity: BASE_SECTORS,
  blockSize: 512,
  readOnly: true,
  async read(_sector, iovecs) {
    for (const v of iovecs) v.fill(0);
  },
  async write() {},
  async flush() {},
  async discard() {},
  async writeZeroes() {},
};

function sectors(seed: number): () => number {
  let x = seed >>> 0;
  return () => {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    return x % BASE_SECTORS;
  };
}

/** Append `n` one-sector WRITE records, `depth` at a time; returns ms per write. */
async function writeMany(
  log: Awaited<ReturnType<typeof snapshotLog>>,
  n: number,
  depth: number,
  next: () => number,
): Promise<number> {
  const data = new Uint8Array(512).fill(0x5a);
  let issued = 0;
  const t0 = performance.now();
  const worker = async (): Promise<void> => {
    while (issued < n) {
      issued++;
      await log.write(next(), [data]);
    }
  };
  await Promise.all(Array.from({ length: depth }, worker));
  return (performance.now() - t0) / n;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

/** One row: a log size and its figures. */
export interface LogOpenRow {
  /** Records in the log. */
  readonly records: number;
  /** File size in bytes. */
  readonly bytes: number;
  /** Median open time, ms. */
  readonly openMs: number;
  /** Median read + CRC-32 of the whole file, ms. */
  readonly scanMs: number;
  /** Mean time of one write with that many extents indexed (depth 1), µs. */
  readonly writeUs: number;
  /** The same writes on an empty log, µs. */
  readonly emptyWriteUs: number;
}

export async function logOpenBench(quick: boolean, reps: number): Promise<LogOpenRow[]> {
  const dir = await mkdtemp(join(tmpdir(), "virtio-ts-bench-log-"));
  const rows: LogOpenRow[] = [];
  console.log("\nsnapshot log at scale (open time and write cost against records in the log)");
  console.log(
    "records   file MiB   open ms   read+CRC ms   open/read   growth   write µs (empty log)",
  );
  try {
    // Warm-up (not printed): every path compiled before the first measured row.
    const warmPath = join(dir, "warm.rlog");
    const warm = await snapshotLog(base, warmPath, { create: true });
    await writeMany(warm, 5000, 64, sectors(1));
    await writeMany(warm, 500, 1, sectors(2));
    await warm.close();
    await (await snapshotLog(base, warmPath, { readOnly: true })).close();
    await rm(warmPath);
    for (const n of LOG_OPEN_SIZES) {
      const path = join(dir, `log-${n}.rlog`);
      const made = await snapshotLog(base, path, { create: true, maxExtents: 1 << 22 });
      await writeMany(made, n, 64, sectors(n));
      await made.flush();
      await made.close();
      const opens: number[] = [];
      const scans: number[] = [];
      for (let r = 0; r < reps; r++) {
        let t0 = performance.now();
        const bytes = await readFile(path);
        crc32(bytes);
        scans.push(performance.now() - t0);
        t0 = performance.now();
        const log = await snapshotLog(base, path, { readOnly: true });
        opens.push(performance.now() - t0);
        if (log.extentCount < n * 0.9) throw new Error(`only ${log.extentCount} extents`);
        await log.close();
      }
      const full = await snapshotLog(base, path, { maxExtents: 1 << 22 });
      const writeUs = 1000 * (await writeMany(full, quick ? WRITES / 4 : WRITES, 1, sectors(7)));
      const bytes = full.logBytes;
      await full.close();
      const emptyPath = join(dir, `empty-${n}.rlog`);
      const empty = await snapshotLog(base, emptyPath, { create: true });
      const emptyWriteUs =
        1000 * (await writeMany(empty, quick ? WRITES / 4 : WRITES, 1, sectors(7)));
      await empty.close();
      await rm(path);
      await rm(emptyPath);
      const row = {
        records: n,
        bytes,
        openMs: median(opens),
        scanMs: median(scans),
        writeUs,
        emptyWriteUs,
      };
      const prev = rows.at(-1);
      rows.push(row);
      console.log(
        [
          String(n).padStart(7),
          (bytes / 2 ** 20).toFixed(0).padStart(10),
          row.openMs.toFixed(0).padStart(9),
          row.scanMs.toFixed(0).padStart(13),
          (row.openMs / row.scanMs).toFixed(1).padStart(11),
          (prev ? `×${(row.openMs / prev.openMs).toFixed(2)}` : "").padStart(8),
          `${row.writeUs.toFixed(0).padStart(10)} (${row.emptyWriteUs.toFixed(0)})`,
        ].join(""),
      );
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
  console.log(
    "growth: open time relative to the previous size (×2 records; ×2.0 is linear, ×4 quadratic)",
  );
  return rows;
}
