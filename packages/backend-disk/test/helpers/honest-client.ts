// A well-behaved NBD client for the hostile-client tests: it writes a pattern, flushes, reads
// it back and checks every byte, over and over, and records how long each operation took.
import { NbdDisk } from "../../src/node.js";

export interface HonestResult {
  /** Write + flush + read-back rounds completed and verified. */
  readonly rounds: number;
  /** Longest single operation (connect, write, flush or read), ms. */
  readonly maxLatencyMs: number;
  /** Rounds whose data did not read back as written (must be 0). */
  readonly mismatches: number;
  /** Failures (must be none). */
  readonly errors: string[];
  /**
   * For each slot, the round whose data was last acknowledged by a completed flush (−1: none):
   * what the disk must hold there, whatever happens to the server afterwards.
   */
  readonly flushed: number[];
}

/** The data round `round` writes (exported so a test can check a disk image afterwards). */
export function roundData(bytes: number, round: number): Uint8Array {
  return pattern(bytes, round);
}

function pattern(len: number, seed: number): Uint8Array {
  const b = new Uint8Array(len);
  for (let i = 0; i < len; i++) b[i] = (i * 13 + seed * 7 + (i >> 9)) & 0xff;
  return b;
}

/**
 * Run rounds of `bytes`-sized write / flush / read-back at sectors from `sector` until `stop`
 * resolves (at least one round). Each round uses a new pattern and a new place in the region,
 * so a stale read cannot pass.
 */
export async function honestClient(
  port: number,
  stop: Promise<unknown>,
  options: { sector?: number; bytes?: number; slots?: number } = {},
): Promise<HonestResult> {
  const sector = options.sector ?? 0;
  const bytes = options.bytes ?? 64 * 1024;
  const slots = options.slots ?? 8;
  let stopped = false;
  void stop.then(() => {
    stopped = true;
  });
  const errors: string[] = [];
  let maxLatencyMs = 0;
  let rounds = 0;
  let mismatches = 0;
  const flushed: number[] = new Array(slots).fill(-1);
  const timed = async <T>(f: () => Promise<T>): Promise<T> => {
    const t0 = performance.now();
    try {
      return await f();
    } finally {
      maxLatencyMs = Math.max(maxLatencyMs, performance.now() - t0);
    }
  };
  let disk: NbdDisk;
  try {
    disk = await timed(() =>
      NbdDisk.connect({ host: "127.0.0.1", port }, "disk", { requestTimeoutMs: 30_000 }),
    );
  } catch (e) {
    return { rounds, maxLatencyMs, mismatches, errors: [String(e)], flushed };
  }
  const back = new Uint8Array(bytes);
  try {
    do {
      const at = sector + (rounds % slots) * (bytes / 512);
      const data = pattern(bytes, rounds);
      await timed(() => disk.write(at, [data]));
      await timed(() => disk.flush());
      flushed[rounds % slots] = rounds;
      back.fill(0);
      await timed(() => disk.read(at, [back]));
      if (!Buffer.from(back).equals(data)) mismatches++;
      rounds++;
    } while (!stopped);
  } catch (e) {
    errors.push(String(e));
  } finally {
    await disk.close();
  }
  return { rounds, maxLatencyMs, mismatches, errors, flushed };
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
