// The workload and its measurement: 4 KiB random reads, a fixed xorshift sequence of blocks,
// `depth` requests kept in flight, the first fifth untimed; counters read over the timed part.
import { BLOCK, type Counters, type Rig } from "./rigs.js";

/** One measured run of one rig. */
export interface Run {
  /** Rig name. */
  readonly name: string;
  /** Queue depth. */
  readonly depth: number;
  /** Requests timed. */
  readonly requests: number;
  /** Nanoseconds they took. */
  readonly ns: number;
  /** Counters over the timed requests. */
  readonly counters: Counters;
  /** Reads whose first word was not their block number (0 when all is well). */
  readonly mismatches: number;
}

/** Requests per second of a run. */
export function perSecond(r: Run): number {
  return r.requests / (r.ns / 1e9);
}

/** `n` random block numbers below `blocks` (xorshift32, fixed seed: the same in every mode). */
export function blockSequence(n: number, blocks: number, seed = 0x9e3779b9): Uint32Array {
  const out = new Uint32Array(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    out[i] = x % blocks;
  }
  return out;
}

/** Run `op(0..n-1)` with `depth` in flight, issuing no new one after `deadline` (ms); returns how many ran. */
async function lanes(
  n: number,
  depth: number,
  op: (i: number) => Promise<unknown>,
  deadline = Number.POSITIVE_INFINITY,
): Promise<number> {
  let next = 0;
  const lane = async (): Promise<void> => {
    while (next < n && performance.now() < deadline) await op(next++);
  };
  await Promise.all(Array.from({ length: Math.min(depth, n) }, lane));
  return next;
}

/**
 * Run the workload on `rig`: `seq.length` reads of 4 KiB, `depth` in flight, the first fifth
 * as warm-up; every read is checked by its first word. With `budgetMs`, no new request starts
 * after a fifth of it in the warm-up or after it in the timed part (a slow mode runs fewer).
 */
export async function measure(
  rig: Rig,
  seq: Uint32Array,
  depth: number,
  budgetMs = Number.POSITIVE_INFINITY,
): Promise<Run> {
  let bad = 0;
  const op = async (i: number): Promise<void> => {
    const b = seq[i]!;
    const d = await rig.read(b * (BLOCK / 512), BLOCK);
    if ((d[0]! | (d[1]! << 8) | (d[2]! << 16) | (d[3]! << 24)) >>> 0 !== b) bad++;
  };
  const warm = Math.floor(seq.length / 5);
  await lanes(warm, depth, op, performance.now() + budgetMs / 5);
  // Settle a late interrupt before the counters start.
  await new Promise((r) => setImmediate(r));
  rig.resetCounters();
  const t0 = process.hrtime.bigint();
  const ran = await lanes(
    seq.length - warm,
    depth,
    (i) => op(warm + i),
    performance.now() + budgetMs,
  );
  const ns = Number(process.hrtime.bigint() - t0);
  await new Promise((r) => setImmediate(r));
  return {
    name: rig.name,
    depth,
    requests: ran,
    ns,
    counters: rig.counters(),
    mismatches: bad,
  };
}
