// A table-driven catalogue of malformed rings, for both layouts. Every row writes guest memory by
// hand (never through our drivers), runs one device-side action (pop by default) through a
// GuestMemory wrapper that counts what the device reads, and asserts:
// - the exact typed error (class, code, key fields) and nothing else, or the documented
//   "valid" / "nothing available" outcome for boundary rows;
// - that the walk was bounded (memory operations ≤ a small multiple of the queue size);
// - that after reset() a well-formed chain written by hand pops correctly.
import type { GuestMemory } from "@virtio-ts/memory";
import { Feature, featureMask } from "@virtio-ts/spec";
import {
  AvailIndexJumpError,
  BufferOutOfBoundsError,
  ChainTooLongError,
  DescriptorChain,
  DescriptorLoopError,
  EventOffsetOutOfRangeError,
  HeadInFlightError,
  HeadOutOfRangeError,
  IndirectNotNegotiatedError,
  IndirectTableLengthError,
  IndirectTableOutOfBoundsError,
  IndirectWithNextError,
  NestedIndirectError,
  NextOutOfRangeError,
  PackedChainUnterminatedError,
  PackedDescNotAvailableError,
  PackedDeviceQueue,
  type QueueLayout,
  ReadableAfterWritableError,
  type RingFeatures,
  ringFeatures,
  SplitDeviceQueue,
  TotalLengthOverflowError,
  VirtqueueError,
} from "@virtio-ts/virtqueue";
import { describe, expect, it } from "vitest";
import {
  availBits,
  EV_DESC,
  EV_DISABLE,
  F_AVAIL,
  F_USED,
  RawPackedRing,
} from "./helpers/raw-packed-ring.js";
import {
  F_INDIRECT,
  F_NEXT,
  F_WRITE,
  permissiveMemory,
  RawSplitRing,
} from "./helpers/raw-split-ring.js";

const MEM_END = 0x10000; // both raw helpers default to 64 KiB of guest memory at address 0
const SD = RawSplitRing.DATA;
const ST = RawSplitRing.TABLE;
const PD = RawPackedRing.DATA;
const PT = RawPackedRing.TABLE;
/** What hi * 2^32 + lo gives for the u64 0xffff_ffff_ffff_fff0 (the device's own arithmetic). */
const WRAP_ADDR = 0xffff_ffff * 2 ** 32 + 0xffff_fff0;

// biome-ignore lint/suspicious/noExplicitAny: error constructors have differing signatures
type ErrorClass = abstract new (...args: any[]) => VirtqueueError;

type Outcome =
  /** The action throws exactly this class, with these fields (code always included). */
  | { error: ErrorClass; fields: Record<string, unknown> & { code: string } }
  /** pop returns true; the popped chain matches `chain`. */
  | { valid: true; chain?: Partial<Record<ChainField, number>> }
  /** pop returns false (nothing available). */
  | { empty: true }
  /** A custom action returns this value. */
  | { returns: unknown };

type ChainField =
  | "head"
  | "count"
  | "readableCount"
  | "readableBytes"
  | "writableBytes"
  | "descCount";

interface Features {
  readonly indirect?: boolean;
  readonly eventIdx?: boolean;
}

interface CaseBase<Raw, Q> {
  readonly name: string;
  /** Defaults: indirect negotiated, event index not. */
  readonly features?: Features;
  /** Queue size (default 8). */
  readonly size?: number;
  /** Cursor capacity (default: queue size). */
  readonly capacity?: number;
  /** Memory in front of the raw ring's (for length arithmetic beyond 64 KiB). */
  readonly memory?: (raw: Raw) => GuestMemory;
  /** Write the hostile ring, by hand. */
  readonly setup: (raw: Raw) => void;
  /** Successful pops before the measured action (their chains are left in flight). */
  readonly prePops?: number;
  /** Queue state to start from (setState), applied before setup's effects are observed. */
  readonly prepare?: (q: Q) => void;
  /** The measured action (default: pop). */
  readonly act?: (q: Q, chain: DescriptorChain, raw: Raw) => unknown;
  readonly expect: Outcome;
}

interface SplitCase extends CaseBase<RawSplitRing, SplitDeviceQueue> {
  readonly layout: "split";
}
interface PackedCase extends CaseBase<RawPackedRing, PackedDeviceQueue> {
  readonly layout: "packed";
}
type Case = SplitCase | PackedCase;

function features(f: Features = {}): RingFeatures {
  let mask = 0n;
  if (f.indirect ?? true) mask |= featureMask(Feature.RING_INDIRECT_DESC);
  if (f.eventIdx ?? false) mask |= featureMask(Feature.RING_EVENT_IDX);
  return ringFeatures(mask);
}

const NO_INDIRECT: Features = { indirect: false };
const EVENT_IDX: Features = { indirect: true, eventIdx: true };

/**
 * A GuestMemory that delegates to `inner` and counts every call the device makes on it; with
 * `countDesc`, also every element read of the descriptor table view mapped at `layout.desc`
 * (the split device reads descriptors with plain loads). The packed device reads its ring with
 * Atomics, which refuses a Proxy, so there only the GuestMemory calls (indirect entries and
 * buffer checks) are counted; its in-ring walk is bounded by the chain cursor fields instead.
 */
function countingMemory(inner: GuestMemory, layout: QueueLayout, countDesc: boolean) {
  const counter = { ops: 0 };
  const counted =
    <A extends unknown[], R>(f: (...args: A) => R) =>
    (...args: A): R => {
      counter.ops++;
      return f(...args);
    };
  const mem: GuestMemory = {
    shared: inner.shared,
    check: counted(inner.check.bind(inner)),
    readU8: counted(inner.readU8.bind(inner)),
    readU16: counted(inner.readU16.bind(inner)),
    readU32: counted(inner.readU32.bind(inner)),
    readU64: counted(inner.readU64.bind(inner)),
    writeU8: counted(inner.writeU8.bind(inner)),
    writeU16: counted(inner.writeU16.bind(inner)),
    writeU32: counted(inner.writeU32.bind(inner)),
    writeU64: counted(inner.writeU64.bind(inner)),
    read: counted(inner.read.bind(inner)),
    write: counted(inner.write.bind(inner)),
    fill: counted(inner.fill.bind(inner)),
    slice: counted(inner.slice.bind(inner)),
    dataView: counted(inner.dataView.bind(inner)),
    u16View: (a, c, k) => inner.u16View(a, c, k),
    u32View: (a, c, k) => {
      const view = inner.u32View(a, c, k);
      if (!countDesc || a !== layout.desc) return view;
      return new Proxy(view, {
        get(target, key) {
          if (typeof key === "string" && /^\d+$/.test(key)) counter.ops++;
          return Reflect.get(target, key);
        },
      });
    },
    sg: counted(inner.sg.bind(inner)),
  };
  return { mem, counter };
}

/** Memory operations one action may make: 4 words per ring descriptor and per table entry, one check each, slack. */
const opBudget = (size: number) => 12 * size + 32;

// ------------------------------------------------------------------------------------------
// Split rows
// ------------------------------------------------------------------------------------------

/** Descriptors 0 → 1 → … → n−1, each 1 readable byte. */
function splitLine(
  raw: RawSplitRing,
  n: number,
  last: Partial<{ next: number; flags: number }> = {},
) {
  for (let i = 0; i < n; i++) {
    const isLast = i === n - 1;
    raw.writeDesc(i, {
      addr: SD,
      len: 1,
      flags: isLast ? (last.flags ?? 0) : F_NEXT,
      next: isLast ? (last.next ?? 0) : i + 1,
    });
  }
}

const split: SplitCase[] = [
  // ---- loops ----
  {
    layout: "split",
    name: "a descriptor whose next points to itself",
    setup: (raw) => {
      raw.writeDesc(2, { addr: SD, len: 8, flags: F_NEXT, next: 2 });
      raw.offer(2);
    },
    expect: {
      error: DescriptorLoopError,
      fields: { code: "descriptor-loop", head: 2, index: 2, indirect: false },
    },
  },
  {
    layout: "split",
    name: "a two-descriptor cycle",
    setup: (raw) => {
      raw.writeDesc(1, { addr: SD, len: 8, flags: F_NEXT, next: 4 });
      raw.writeDesc(4, { addr: SD, len: 8, flags: F_NEXT, next: 1 });
      raw.offer(1);
    },
    expect: {
      error: DescriptorLoopError,
      fields: { code: "descriptor-loop", head: 1, index: 1, indirect: false },
    },
  },
  {
    layout: "split",
    name: "a cycle through the whole table of 256",
    size: 256,
    setup: (raw) => {
      for (let i = 0; i < 256; i++)
        raw.writeDesc(i, { addr: SD, len: 1, flags: F_NEXT, next: (i + 1) % 256 });
      raw.offer(0);
    },
    expect: {
      error: DescriptorLoopError,
      fields: { code: "descriptor-loop", head: 0, index: 0, indirect: false },
    },
  },
  {
    layout: "split",
    name: "a tail that loops back into the middle of the chain (rho shape)",
    setup: (raw) => {
      splitLine(raw, 6, { flags: F_NEXT, next: 3 });
      raw.offer(0);
    },
    expect: {
      error: DescriptorLoopError,
      fields: { code: "descriptor-loop", head: 0, index: 3, indirect: false },
    },
  },
  // ---- length ----
  {
    layout: "split",
    name: "a chain of exactly queue size descriptors (boundary)",
    setup: (raw) => {
      splitLine(raw, 8);
      raw.offer(0);
    },
    expect: { valid: true, chain: { head: 0, count: 8, readableBytes: 8 } },
  },
  {
    layout: "split",
    name: "a chain of queue size + 1 (direct descriptors then an indirect table)",
    setup: (raw) => {
      raw.writeDesc(0, { addr: SD, len: 1, flags: F_NEXT, next: 1 });
      raw.writeDesc(1, { addr: SD, len: 1, flags: F_NEXT, next: 2 });
      raw.writeDesc(2, { addr: ST, len: 16 * 7, flags: F_INDIRECT });
      raw.writeTable(
        ST,
        Array.from({ length: 7 }, (_, i) => ({
          addr: SD,
          len: 1,
          flags: i < 6 ? F_NEXT : 0,
          next: i + 1,
        })),
      );
      raw.offer(0);
    },
    expect: {
      error: ChainTooLongError,
      fields: { code: "chain-too-long", head: 0, index: 6, indirect: true, limit: 8 },
    },
  },
  {
    layout: "split",
    name: "a chain longer than the cursor's capacity",
    capacity: 3,
    setup: (raw) => {
      splitLine(raw, 4);
      raw.offer(0);
    },
    expect: {
      error: ChainTooLongError,
      fields: { code: "chain-too-long", head: 0, index: 3, indirect: false, limit: 3 },
    },
  },
  {
    layout: "split",
    name: "a chain exactly as long as the cursor's capacity (boundary)",
    capacity: 4,
    setup: (raw) => {
      splitLine(raw, 4);
      raw.offer(0);
    },
    expect: { valid: true, chain: { count: 4 } },
  },
  // ---- indices ----
  {
    layout: "split",
    name: "a next equal to the queue size",
    setup: (raw) => {
      raw.writeDesc(0, { addr: SD, len: 8, flags: F_NEXT, next: 8 });
      raw.offer(0);
    },
    expect: {
      error: NextOutOfRangeError,
      fields: { code: "next-out-of-range", head: 0, index: 0, indirect: false, next: 8 },
    },
  },
  {
    layout: "split",
    name: "a next of 0xffff at the end of a longer chain",
    setup: (raw) => {
      splitLine(raw, 3, { flags: F_NEXT, next: 0xffff });
      raw.offer(0);
    },
    expect: {
      error: NextOutOfRangeError,
      fields: { code: "next-out-of-range", head: 0, index: 2, indirect: false, next: 0xffff },
    },
  },
  {
    layout: "split",
    name: "an out-of-range next without NEXT set is ignored (boundary)",
    setup: (raw) => {
      raw.writeDesc(0, { addr: SD, len: 8, flags: 0, next: 0xffff });
      raw.offer(0);
    },
    expect: { valid: true, chain: { count: 1, readableBytes: 8 } },
  },
  {
    layout: "split",
    name: "an available head equal to the queue size",
    setup: (raw) => raw.offer(8),
    expect: {
      error: HeadOutOfRangeError,
      fields: { code: "head-out-of-range", head: 8, queueSize: 8 },
    },
  },
  {
    layout: "split",
    name: "an available head of 0xffff",
    setup: (raw) => raw.offer(0xffff),
    expect: {
      error: HeadOutOfRangeError,
      fields: { code: "head-out-of-range", head: 0xffff, queueSize: 8 },
    },
  },
  {
    layout: "split",
    name: "avail.idx jumping by queue size + 1",
    setup: (raw) => raw.setAvailIdx(9),
    expect: {
      error: AvailIndexJumpError,
      fields: { code: "avail-index-jump", availIdx: 9, lastAvailIdx: 0, queueSize: 8 },
    },
  },
  {
    layout: "split",
    name: "avail.idx jumping by 0x8000",
    setup: (raw) => raw.setAvailIdx(0x8000),
    expect: {
      error: AvailIndexJumpError,
      fields: { code: "avail-index-jump", availIdx: 0x8000, lastAvailIdx: 0, queueSize: 8 },
    },
  },
  {
    layout: "split",
    name: "avail.idx moving backwards after one pop",
    setup: (raw) => {
      raw.writeDesc(0, { addr: SD, len: 8 });
      raw.offer(0);
    },
    prePops: 1,
    act: (q, chain, raw) => {
      // The hostile driver rewinds avail.idx from 1 to 0 (a 16-bit distance of 0xffff).
      raw.setAvailIdx(0);
      return q.pop(chain);
    },
    expect: {
      error: AvailIndexJumpError,
      fields: { code: "avail-index-jump", availIdx: 0, lastAvailIdx: 1, queueSize: 8 },
    },
  },
  {
    layout: "split",
    name: "avail.idx exactly queue size ahead (boundary)",
    setup: (raw) => {
      for (let i = 0; i < 8; i++) {
        raw.writeDesc(i, { addr: SD, len: 1 });
        raw.offer(7 - i, false);
      }
      raw.setAvailIdx(8);
    },
    expect: { valid: true, chain: { head: 7, count: 1 } },
  },
  {
    layout: "split",
    name: "avail.idx equal to the device's index (boundary: nothing available)",
    setup: (raw) => {
      raw.writeDesc(0, { addr: SD, len: 8, flags: F_NEXT, next: 0 }); // a loop nobody offered
      raw.offer(0, false);
    },
    expect: { empty: true },
  },
  {
    layout: "split",
    name: "the same head made available twice while in flight",
    setup: (raw) => {
      raw.writeDesc(2, { addr: SD, len: 8 });
      raw.offer(2);
      raw.offer(2);
    },
    prePops: 1,
    expect: { error: HeadInFlightError, fields: { code: "head-in-flight", head: 2 } },
  },
  {
    layout: "split",
    name: "the head of a chain that failed validation made available again",
    setup: (raw) => {
      raw.writeDesc(3, { addr: SD, len: 8, flags: F_NEXT, next: 3 });
      raw.offer(3);
      raw.offer(3);
    },
    act: (q, chain) => {
      expect(() => q.pop(chain)).toThrow(DescriptorLoopError); // leaves head 3 in flight
      return q.pop(chain);
    },
    expect: { error: HeadInFlightError, fields: { code: "head-in-flight", head: 3 } },
  },
  // ---- ordering ----
  {
    layout: "split",
    name: "a readable descriptor after a writable one",
    setup: (raw) => {
      raw.writeDesc(0, { addr: SD, len: 8, flags: F_WRITE | F_NEXT, next: 5 });
      raw.writeDesc(5, { addr: SD, len: 8 });
      raw.offer(0);
    },
    expect: {
      error: ReadableAfterWritableError,
      fields: { code: "readable-after-writable", head: 0, index: 5, indirect: false },
    },
  },
  {
    layout: "split",
    name: "a readable entry after a writable one inside an indirect table",
    setup: (raw) => {
      raw.writeDesc(0, { addr: ST, len: 48, flags: F_INDIRECT });
      raw.writeTable(ST, [
        { addr: SD, len: 8, flags: F_NEXT, next: 1 },
        { addr: SD, len: 8, flags: F_WRITE | F_NEXT, next: 2 },
        { addr: SD, len: 8 },
      ]);
      raw.offer(0);
    },
    expect: {
      error: ReadableAfterWritableError,
      fields: { code: "readable-after-writable", head: 0, index: 2, indirect: true },
    },
  },
  {
    layout: "split",
    name: "a writable direct descriptor followed by an indirect table that starts readable",
    setup: (raw) => {
      raw.writeDesc(0, { addr: SD, len: 8, flags: F_WRITE | F_NEXT, next: 1 });
      raw.writeDesc(1, { addr: ST, len: 16, flags: F_INDIRECT });
      raw.writeTable(ST, [{ addr: SD, len: 8 }]);
      raw.offer(0);
    },
    expect: {
      error: ReadableAfterWritableError,
      fields: { code: "readable-after-writable", head: 0, index: 0, indirect: true },
    },
  },
  {
    layout: "split",
    name: "a readable descriptor after a zero-length writable one",
    setup: (raw) => {
      raw.writeDesc(0, { addr: SD, len: 0, flags: F_WRITE | F_NEXT, next: 3 });
      raw.writeDesc(3, { addr: SD, len: 8 });
      raw.offer(0);
    },
    expect: {
      error: ReadableAfterWritableError,
      fields: { code: "readable-after-writable", head: 0, index: 3, indirect: false },
    },
  },
  {
    layout: "split",
    name: "a zero-length writable direct descriptor followed by an indirect table that starts readable",
    setup: (raw) => {
      raw.writeDesc(0, { addr: SD, len: 0, flags: F_WRITE | F_NEXT, next: 1 });
      raw.writeDesc(1, { addr: ST, len: 16, flags: F_INDIRECT });
      raw.writeTable(ST, [{ addr: SD, len: 8 }]);
      raw.offer(0);
    },
    expect: {
      error: ReadableAfterWritableError,
      fields: { code: "readable-after-writable", head: 0, index: 0, indirect: true },
    },
  },
  // ---- indirect ----
  {
    layout: "split",
    name: "INDIRECT without VIRTIO_F_INDIRECT_DESC",
    features: NO_INDIRECT,
    setup: (raw) => {
      raw.writeTable(ST, [{ addr: SD, len: 8 }]);
      raw.writeDesc(0, { addr: ST, len: 16, flags: F_INDIRECT });
      raw.offer(0);
    },
    expect: {
      error: IndirectNotNegotiatedError,
      fields: { code: "indirect-not-negotiated", head: 0, index: 0, indirect: false },
    },
  },
  {
    layout: "split",
    name: "INDIRECT inside an indirect table",
    setup: (raw) => {
      raw.writeDesc(0, { addr: ST, len: 32, flags: F_INDIRECT });
      raw.writeTable(ST, [
        { addr: SD, len: 8, flags: F_NEXT, next: 1 },
        { addr: ST, len: 16, flags: F_INDIRECT },
      ]);
      raw.offer(0);
    },
    expect: {
      error: NestedIndirectError,
      fields: { code: "nested-indirect", head: 0, index: 1, indirect: true },
    },
  },
  {
    layout: "split",
    name: "an indirect table of length 0",
    setup: (raw) => {
      raw.writeDesc(4, { addr: ST, len: 0, flags: F_INDIRECT });
      raw.offer(4);
    },
    expect: {
      error: IndirectTableLengthError,
      fields: { code: "indirect-table-length", head: 4, index: 4, indirect: false, len: 0 },
    },
  },
  {
    layout: "split",
    name: "an indirect table of 24 bytes (not a multiple of 16)",
    setup: (raw) => {
      raw.writeDesc(3, { addr: ST, len: 24, flags: F_INDIRECT });
      raw.offer(3);
    },
    expect: {
      error: IndirectTableLengthError,
      fields: { code: "indirect-table-length", head: 3, index: 3, len: 24 },
    },
  },
  {
    layout: "split",
    name: "INDIRECT together with NEXT",
    setup: (raw) => {
      raw.writeTable(ST, [{ addr: SD, len: 8 }]);
      raw.writeDesc(0, { addr: ST, len: 16, flags: F_INDIRECT | F_NEXT, next: 1 });
      raw.writeDesc(1, { addr: SD, len: 8 });
      raw.offer(0);
    },
    expect: {
      error: IndirectWithNextError,
      fields: { code: "indirect-with-next", head: 0, index: 0, indirect: false },
    },
  },
  {
    layout: "split",
    name: "an indirect table running 16 bytes past the end of guest memory",
    setup: (raw) => {
      raw.writeDesc(0, { addr: MEM_END - 16, len: 32, flags: F_INDIRECT });
      raw.offer(0);
    },
    expect: {
      error: IndirectTableOutOfBoundsError,
      fields: {
        code: "indirect-table-out-of-bounds",
        head: 0,
        index: 0,
        addr: MEM_END - 16,
        len: 32,
      },
    },
  },
  {
    layout: "split",
    name: "an indirect table at an address that wraps 2^64",
    setup: (raw) => {
      raw.writeDesc(0, { addr: 0xffff_ffff_ffff_fff0n, len: 32, flags: F_INDIRECT });
      raw.offer(0);
    },
    expect: {
      error: IndirectTableOutOfBoundsError,
      fields: { code: "indirect-table-out-of-bounds", head: 0, index: 0, len: 32 },
    },
  },
  {
    layout: "split",
    name: "an indirect table of queue size + 1 entries (refused before it is read)",
    setup: (raw) => {
      raw.writeDesc(0, { addr: ST, len: 16 * 9, flags: F_INDIRECT });
      raw.offer(0);
    },
    expect: {
      error: ChainTooLongError,
      fields: { code: "chain-too-long", head: 0, index: 0, indirect: false, limit: 8 },
    },
  },
  {
    layout: "split",
    name: "an indirect table with a length of 0xfffffff0 (refused before it is read)",
    setup: (raw) => {
      raw.writeDesc(0, { addr: ST, len: 0xffff_fff0, flags: F_INDIRECT });
      raw.offer(0);
    },
    expect: {
      error: ChainTooLongError,
      fields: { code: "chain-too-long", head: 0, index: 0, indirect: false, limit: 8 },
    },
  },
  {
    layout: "split",
    name: "an indirect table of exactly queue size entries (boundary)",
    setup: (raw) => {
      raw.writeDesc(0, { addr: ST, len: 16 * 8, flags: F_INDIRECT });
      raw.writeTable(
        ST,
        Array.from({ length: 8 }, (_, i) => ({
          addr: SD,
          len: 2,
          flags: i < 7 ? F_NEXT : 0,
          next: i + 1,
        })),
      );
      raw.offer(0);
    },
    expect: { valid: true, chain: { count: 8, readableBytes: 16 } },
  },
  {
    layout: "split",
    name: "a self-loop inside an indirect table",
    setup: (raw) => {
      raw.writeDesc(0, { addr: ST, len: 32, flags: F_INDIRECT });
      raw.writeTable(ST, [
        { addr: SD, len: 8, flags: F_NEXT, next: 1 },
        { addr: SD, len: 8, flags: F_NEXT, next: 1 },
      ]);
      raw.offer(0);
    },
    expect: {
      error: DescriptorLoopError,
      fields: { code: "descriptor-loop", head: 0, index: 1, indirect: true },
    },
  },
  {
    layout: "split",
    name: "a cycle through a whole indirect table of queue size entries",
    setup: (raw) => {
      raw.writeDesc(0, { addr: ST, len: 16 * 8, flags: F_INDIRECT });
      raw.writeTable(
        ST,
        Array.from({ length: 8 }, (_, i) => ({
          addr: SD,
          len: 1,
          flags: F_NEXT,
          next: (i + 1) % 8,
        })),
      );
      raw.offer(0);
    },
    expect: {
      error: DescriptorLoopError,
      fields: { code: "descriptor-loop", head: 0, index: 0, indirect: true },
    },
  },
  {
    layout: "split",
    name: "an indirect next outside the table",
    setup: (raw) => {
      raw.writeDesc(0, { addr: ST, len: 32, flags: F_INDIRECT });
      raw.writeTable(ST, [
        { addr: SD, len: 8, flags: F_NEXT, next: 1 },
        { addr: SD, len: 8, flags: F_NEXT, next: 2 },
      ]);
      raw.offer(0);
    },
    expect: {
      error: NextOutOfRangeError,
      fields: { code: "next-out-of-range", head: 0, index: 1, indirect: true, next: 2 },
    },
  },
  {
    layout: "split",
    name: "an indirect entry whose buffer lies outside guest memory",
    setup: (raw) => {
      raw.writeDesc(0, { addr: ST, len: 16, flags: F_INDIRECT });
      raw.writeTable(ST, [{ addr: MEM_END, len: 1 }]);
      raw.offer(0);
    },
    expect: {
      error: BufferOutOfBoundsError,
      fields: {
        code: "buffer-out-of-bounds",
        head: 0,
        index: 0,
        indirect: true,
        addr: MEM_END,
        len: 1,
      },
    },
  },
  {
    layout: "split",
    name: "WRITE on the descriptor that refers to an indirect table is ignored (boundary)",
    setup: (raw) => {
      raw.writeDesc(0, { addr: SD, len: 4, flags: F_NEXT, next: 1 });
      raw.writeDesc(1, { addr: ST, len: 32, flags: F_INDIRECT | F_WRITE });
      raw.writeTable(ST, [
        { addr: SD, len: 8, flags: F_NEXT, next: 1 },
        { addr: SD + 0x100, len: 16, flags: F_WRITE },
      ]);
      raw.offer(0);
    },
    expect: { valid: true, chain: { count: 3, readableBytes: 12, writableBytes: 16 } },
  },
  // ---- bounds ----
  {
    layout: "split",
    name: "a buffer whose addr + len wraps 2^64",
    setup: (raw) => {
      raw.writeDesc(0, { addr: 0xffff_ffff_ffff_fff0n, len: 0x20 });
      raw.offer(0);
    },
    expect: {
      error: BufferOutOfBoundsError,
      fields: { code: "buffer-out-of-bounds", head: 0, index: 0, addr: WRAP_ADDR, len: 0x20 },
    },
  },
  {
    layout: "split",
    name: "a zero-length buffer at address 2^53",
    setup: (raw) => {
      raw.writeDesc(0, { addr: 2n ** 53n, len: 0 });
      raw.offer(0);
    },
    expect: {
      error: BufferOutOfBoundsError,
      fields: { code: "buffer-out-of-bounds", head: 0, index: 0, addr: 2 ** 53, len: 0 },
    },
  },
  {
    layout: "split",
    name: "a buffer at address 2^53 + 2^32 (low word 0, in memory)",
    setup: (raw) => {
      raw.writeDesc(0, { addr: 2n ** 53n + 2n ** 32n + BigInt(SD), len: 8 });
      raw.offer(0);
    },
    expect: {
      error: BufferOutOfBoundsError,
      fields: { code: "buffer-out-of-bounds", head: 0, index: 0, len: 8 },
    },
  },
  {
    layout: "split",
    name: "a writable buffer ending exactly at the end of guest memory (boundary)",
    setup: (raw) => {
      raw.writeDesc(0, { addr: MEM_END - 64, len: 64, flags: F_WRITE });
      raw.offer(0);
    },
    expect: { valid: true, chain: { count: 1, writableBytes: 64 } },
  },
  {
    layout: "split",
    name: "a writable buffer ending one byte past the end of guest memory",
    setup: (raw) => {
      raw.writeDesc(1, { addr: MEM_END - 63, len: 64, flags: F_WRITE });
      raw.offer(1);
    },
    expect: {
      error: BufferOutOfBoundsError,
      fields: { code: "buffer-out-of-bounds", head: 1, index: 1, addr: MEM_END - 63, len: 64 },
    },
  },
  {
    layout: "split",
    name: "a zero-length descriptor is accepted as an empty segment (boundary)",
    setup: (raw) => {
      raw.writeDesc(0, { addr: SD, len: 0, flags: F_NEXT, next: 1 });
      raw.writeDesc(1, { addr: SD, len: 4, flags: F_WRITE });
      raw.offer(0);
    },
    expect: {
      valid: true,
      chain: { count: 2, readableCount: 1, readableBytes: 0, writableBytes: 4 },
    },
  },
  {
    layout: "split",
    name: "a zero-length descriptor exactly at the end of guest memory (boundary)",
    setup: (raw) => {
      raw.writeDesc(0, { addr: MEM_END, len: 0 });
      raw.offer(0);
    },
    expect: { valid: true, chain: { count: 1, readableBytes: 0 } },
  },
  {
    layout: "split",
    name: "a zero-length descriptor one byte past the end of guest memory",
    setup: (raw) => {
      raw.writeDesc(0, { addr: MEM_END + 1, len: 0 });
      raw.offer(0);
    },
    expect: {
      error: BufferOutOfBoundsError,
      fields: { code: "buffer-out-of-bounds", head: 0, index: 0, addr: MEM_END + 1, len: 0 },
    },
  },
  {
    layout: "split",
    name: "a chain of 2^32 bytes, readable and writable together",
    memory: (raw) => permissiveMemory(raw.mem),
    setup: (raw) => {
      raw.writeDesc(0, { addr: SD, len: 0x8000_0000, flags: F_NEXT, next: 1 });
      raw.writeDesc(1, { addr: SD, len: 0x8000_0000, flags: F_WRITE });
      raw.offer(0);
    },
    expect: {
      error: TotalLengthOverflowError,
      fields: { code: "total-length-overflow", head: 0, index: 1, indirect: false },
    },
  },
  {
    layout: "split",
    name: "a chain of 2^32 bytes across an indirect table",
    memory: (raw) => permissiveMemory(raw.mem),
    setup: (raw) => {
      raw.writeDesc(0, { addr: SD, len: 0xffff_ffff, flags: F_NEXT, next: 1 });
      raw.writeDesc(1, { addr: ST, len: 16, flags: F_INDIRECT });
      raw.writeTable(ST, [{ addr: SD, len: 1, flags: F_WRITE }]);
      raw.offer(0);
    },
    expect: {
      error: TotalLengthOverflowError,
      fields: { code: "total-length-overflow", head: 0, index: 0, indirect: true },
    },
  },
  {
    layout: "split",
    name: "a chain of exactly 2^32 − 1 bytes (boundary)",
    memory: (raw) => permissiveMemory(raw.mem),
    setup: (raw) => {
      raw.writeDesc(0, { addr: SD, len: 0x8000_0000, flags: F_NEXT, next: 1 });
      raw.writeDesc(1, { addr: SD, len: 0x7fff_ffff, flags: F_WRITE });
      raw.offer(0);
    },
    expect: { valid: true, chain: { readableBytes: 0x8000_0000, writableBytes: 0x7fff_ffff } },
  },
  // ---- event index ----
  {
    layout: "split",
    name: "with EVENT_IDX, a hostile used_event never makes needsInterrupt throw",
    features: EVENT_IDX,
    setup: (raw) => {
      raw.writeDesc(0, { addr: SD, len: 8 });
      raw.offer(0);
      raw.setUsedEvent(0xffff);
    },
    act: (q, chain) => {
      q.pop(chain);
      q.push(chain.head, 0);
      return typeof q.needsInterrupt();
    },
    expect: { returns: "boolean" },
  },
  {
    layout: "split",
    name: "with EVENT_IDX, avail.idx jumping by queue size + 1",
    features: EVENT_IDX,
    setup: (raw) => raw.setAvailIdx(9),
    expect: {
      error: AvailIndexJumpError,
      fields: { code: "avail-index-jump", availIdx: 9, lastAvailIdx: 0, queueSize: 8 },
    },
  },
];

// ------------------------------------------------------------------------------------------
// Packed rows
// ------------------------------------------------------------------------------------------

/** Write descriptor `pos` of a raw packed ring as available in lap `wrap` with extra flags. */
function pAvail(
  raw: RawPackedRing,
  pos: number,
  addr: number | bigint,
  len: number,
  id: number,
  flags = 0,
  wrap = true,
) {
  raw.writeDesc(pos, addr, len, id, flags | availBits(wrap));
}

const packed: PackedCase[] = [
  // ---- availability and flags ----
  {
    layout: "packed",
    name: "a descriptor made available with the wrong wrap counter (not available)",
    setup: (raw) => raw.writeDesc(0, PD, 8, 0, availBits(false)),
    expect: { empty: true },
  },
  {
    layout: "packed",
    name: "a zeroed descriptor (AVAIL = USED = 0, not available)",
    setup: (raw) => raw.writeDesc(0, PD, 8, 0, F_NEXT),
    expect: { empty: true },
  },
  {
    layout: "packed",
    name: "AVAIL = USED = 1 at the next position (a used descriptor, §2.8.1: not available)",
    setup: (raw) => raw.writeDesc(0, PD, 8, 0, F_AVAIL | F_USED),
    expect: { empty: true },
  },
  {
    layout: "packed",
    name: "AVAIL = USED = 0 at the next position in the second lap (a used descriptor, §2.8.1: not available)",
    prepare: (q) => q.setState({ availIdx: 2, usedIdx: 2, availWrap: false, usedWrap: false }),
    setup: (raw) => raw.writeDesc(2, PD, 8, 0, 0),
    expect: { empty: true },
  },
  {
    layout: "packed",
    name: "a list continuing into a descriptor of the previous lap",
    setup: (raw) => {
      raw.writeDesc(1, PD, 1, 0, F_USED);
      pAvail(raw, 0, PD, 1, 0, F_NEXT);
    },
    expect: {
      error: PackedDescNotAvailableError,
      fields: { code: "packed-desc-not-available", position: 1, flags: F_USED, wrap: true },
    },
  },
  {
    layout: "packed",
    name: "a list continuing into a descriptor with AVAIL = USED = 1",
    setup: (raw) => {
      raw.writeDesc(1, PD, 1, 0, F_AVAIL | F_USED);
      pAvail(raw, 0, PD, 1, 0, F_NEXT);
    },
    expect: {
      error: PackedDescNotAvailableError,
      fields: { code: "packed-desc-not-available", position: 1, flags: 0x8080, wrap: true },
    },
  },
  {
    layout: "packed",
    name: "a list crossing the ring end without flipping AVAIL after the wrap",
    prepare: (q) => q.setState({ availIdx: 7, usedIdx: 7, availWrap: true, usedWrap: true }),
    setup: (raw) => {
      pAvail(raw, 0, PD, 1, 0, 0, true); // should be lap 0 (wrap false) after crossing the end
      pAvail(raw, 7, PD, 1, 0, F_NEXT, true);
    },
    expect: {
      error: PackedDescNotAvailableError,
      fields: { code: "packed-desc-not-available", position: 0, flags: F_AVAIL, wrap: false },
    },
  },
  {
    layout: "packed",
    name: "a list crossing the ring end with AVAIL flipped (boundary)",
    prepare: (q) => q.setState({ availIdx: 7, usedIdx: 7, availWrap: true, usedWrap: true }),
    setup: (raw) => {
      pAvail(raw, 0, PD, 2, 3, F_WRITE, false);
      pAvail(raw, 7, PD, 1, 3, F_NEXT, true);
    },
    expect: {
      valid: true,
      chain: { head: 3, count: 2, descCount: 2, readableBytes: 1, writableBytes: 2 },
    },
  },
  // ---- length ----
  {
    layout: "packed",
    name: "a list that never ends within the queue size",
    size: 4,
    setup: (raw) => {
      for (let i = 3; i >= 0; i--) pAvail(raw, i, PD, 1, 0, F_NEXT);
    },
    expect: {
      error: PackedChainUnterminatedError,
      fields: { code: "packed-chain-unterminated", position: 0, queueSize: 4 },
    },
  },
  {
    layout: "packed",
    name: "a list of 256 NEXT descriptors in a ring of 256",
    size: 256,
    setup: (raw) => {
      for (let i = 255; i >= 0; i--) pAvail(raw, i, PD, 1, 0, F_NEXT);
    },
    expect: {
      error: PackedChainUnterminatedError,
      fields: { code: "packed-chain-unterminated", position: 0, queueSize: 256 },
    },
  },
  {
    layout: "packed",
    name: "a list of exactly queue size descriptors (boundary)",
    setup: (raw) => {
      for (let i = 7; i >= 0; i--) pAvail(raw, i, PD, 1, 5, i < 7 ? F_NEXT : 0);
    },
    expect: { valid: true, chain: { head: 5, count: 8, descCount: 8 } },
  },
  {
    layout: "packed",
    name: "a list longer than the cursor's capacity",
    capacity: 2,
    setup: (raw) =>
      raw.offer(
        [
          { addr: PD, len: 1 },
          { addr: PD, len: 1 },
          { addr: PD, len: 1 },
        ],
        0,
      ),
    expect: {
      error: ChainTooLongError,
      fields: { code: "chain-too-long", head: 0, index: 2, indirect: false, limit: 2 },
    },
  },
  // ---- buffer IDs ----
  {
    layout: "packed",
    name: "a buffer ID equal to the queue size",
    setup: (raw) => raw.offer([{ addr: PD, len: 1 }], 8),
    expect: {
      error: HeadOutOfRangeError,
      fields: { code: "head-out-of-range", head: 8, queueSize: 8 },
    },
  },
  {
    layout: "packed",
    name: "a buffer ID of 0xffff at the end of a list",
    setup: (raw) =>
      raw.offer(
        [
          { addr: PD, len: 1, id: 0 },
          { addr: PD, len: 1 },
        ],
        0xffff,
      ),
    expect: {
      error: HeadOutOfRangeError,
      fields: { code: "head-out-of-range", head: 0xffff, queueSize: 8 },
    },
  },
  {
    layout: "packed",
    name: "garbage IDs before the last descriptor are ignored, the last one counts (boundary)",
    setup: (raw) =>
      raw.offer(
        [
          { addr: PD, len: 1, id: 0xffff },
          { addr: PD, len: 1, id: 4 },
        ],
        4,
      ),
    expect: { valid: true, chain: { head: 4, count: 2, descCount: 2 } },
  },
  {
    layout: "packed",
    name: "a buffer ID reused while in flight",
    setup: (raw) => {
      raw.offer([{ addr: PD, len: 1 }], 3);
      raw.offer([{ addr: PD, len: 1 }], 3);
    },
    prePops: 1,
    expect: { error: HeadInFlightError, fields: { code: "head-in-flight", head: 3 } },
  },
  {
    layout: "packed",
    name: "the buffer ID of a chain that failed validation reused",
    setup: (raw) => {
      raw.offer([{ addr: MEM_END, len: 1 }], 2);
      raw.offer([{ addr: PD, len: 1 }], 2);
    },
    act: (q, chain) => {
      expect(() => q.pop(chain)).toThrow(BufferOutOfBoundsError); // leaves ID 2 in flight
      return q.pop(chain);
    },
    expect: { error: HeadInFlightError, fields: { code: "head-in-flight", head: 2 } },
  },
  // ---- ordering ----
  {
    layout: "packed",
    name: "a readable descriptor after a writable one",
    setup: (raw) =>
      raw.offer(
        [
          { addr: PD, len: 8, flags: F_WRITE },
          { addr: PD, len: 8 },
        ],
        6,
      ),
    expect: {
      error: ReadableAfterWritableError,
      fields: { code: "readable-after-writable", head: 6, index: 1, indirect: false },
    },
  },
  {
    layout: "packed",
    name: "a readable entry after a writable one inside an indirect table",
    setup: (raw) => {
      raw.writeTableEntry(PT, 0, { addr: PD, len: 8, flags: F_WRITE });
      raw.writeTableEntry(PT, 1, { addr: PD, len: 8 });
      raw.offer([{ addr: PT, len: 32, flags: F_INDIRECT }], 1);
    },
    expect: {
      error: ReadableAfterWritableError,
      fields: { code: "readable-after-writable", head: 1, index: 1, indirect: true },
    },
  },
  // ---- indirect ----
  {
    layout: "packed",
    name: "INDIRECT without VIRTIO_F_INDIRECT_DESC",
    features: NO_INDIRECT,
    setup: (raw) => {
      raw.writeTableEntry(PT, 0, { addr: PD, len: 8 });
      raw.offer([{ addr: PT, len: 16, flags: F_INDIRECT }], 0);
    },
    expect: {
      error: IndirectNotNegotiatedError,
      fields: { code: "indirect-not-negotiated", head: 0, index: 0, indirect: false },
    },
  },
  {
    layout: "packed",
    name: "INDIRECT together with NEXT on the first descriptor",
    setup: (raw) => {
      raw.writeTableEntry(PT, 0, { addr: PD, len: 8 });
      raw.offer(
        [
          { addr: PT, len: 16, flags: F_INDIRECT },
          { addr: PD, len: 8 },
        ],
        0,
      );
    },
    expect: {
      error: IndirectWithNextError,
      fields: { code: "indirect-with-next", head: 0, index: 0, indirect: false },
    },
  },
  {
    layout: "packed",
    name: "INDIRECT on the last descriptor of a list linked by NEXT",
    setup: (raw) => {
      raw.writeTableEntry(PT, 0, { addr: PD, len: 8 });
      raw.offer(
        [
          { addr: PD, len: 8 },
          { addr: PT, len: 16, flags: F_INDIRECT },
        ],
        5,
      );
    },
    expect: {
      error: IndirectWithNextError,
      fields: { code: "indirect-with-next", head: 5, index: 1, indirect: false },
    },
  },
  {
    layout: "packed",
    name: "INDIRECT inside an indirect table",
    setup: (raw) => {
      raw.writeTableEntry(PT, 0, { addr: PD, len: 8 });
      raw.writeTableEntry(PT, 1, { addr: PT, len: 16, flags: F_INDIRECT });
      raw.offer([{ addr: PT, len: 32, flags: F_INDIRECT }], 0);
    },
    expect: {
      error: NestedIndirectError,
      fields: { code: "nested-indirect", head: 0, index: 1, indirect: true },
    },
  },
  {
    layout: "packed",
    name: "an indirect table of length 0",
    setup: (raw) => raw.offer([{ addr: PT, len: 0, flags: F_INDIRECT }], 2),
    expect: {
      error: IndirectTableLengthError,
      fields: { code: "indirect-table-length", head: 2, index: 0, indirect: false, len: 0 },
    },
  },
  {
    layout: "packed",
    name: "an indirect table of 40 bytes (not a multiple of 16)",
    setup: (raw) => raw.offer([{ addr: PT, len: 40, flags: F_INDIRECT }], 2),
    expect: {
      error: IndirectTableLengthError,
      fields: { code: "indirect-table-length", head: 2, index: 0, len: 40 },
    },
  },
  {
    layout: "packed",
    name: "an indirect table running past the end of guest memory",
    setup: (raw) => raw.offer([{ addr: MEM_END - 16, len: 32, flags: F_INDIRECT }], 0),
    expect: {
      error: IndirectTableOutOfBoundsError,
      fields: {
        code: "indirect-table-out-of-bounds",
        head: 0,
        index: 0,
        addr: MEM_END - 16,
        len: 32,
      },
    },
  },
  {
    layout: "packed",
    name: "an indirect table of queue size + 1 entries (refused before it is read)",
    setup: (raw) => raw.offer([{ addr: PT, len: 16 * 9, flags: F_INDIRECT }], 0),
    expect: {
      error: ChainTooLongError,
      fields: { code: "chain-too-long", head: 0, index: 0, indirect: false, limit: 8 },
    },
  },
  {
    layout: "packed",
    name: "an indirect table of exactly queue size entries (boundary)",
    setup: (raw) => {
      for (let i = 0; i < 8; i++) raw.writeTableEntry(PT, i, { addr: PD, len: 3 });
      raw.offer([{ addr: PT, len: 16 * 8, flags: F_INDIRECT }], 7);
    },
    expect: { valid: true, chain: { head: 7, count: 8, descCount: 1, readableBytes: 24 } },
  },
  {
    layout: "packed",
    name: "a NEXT loop inside an indirect table is ignored: entries are read in order (boundary)",
    setup: (raw) => {
      raw.writeTableEntry(PT, 0, { addr: PD, len: 1, flags: F_NEXT, id: 0 });
      raw.writeTableEntry(PT, 1, { addr: PD, len: 2, flags: F_NEXT, id: 0 }); // "next" would be 0: ignored
      raw.offer([{ addr: PT, len: 32, flags: F_INDIRECT }], 0);
    },
    expect: { valid: true, chain: { count: 2, readableBytes: 3, descCount: 1 } },
  },
  {
    layout: "packed",
    name: "an indirect entry whose buffer lies outside guest memory",
    setup: (raw) => {
      raw.writeTableEntry(PT, 0, { addr: PD, len: 8 });
      raw.writeTableEntry(PT, 1, { addr: MEM_END - 4, len: 8, flags: F_WRITE });
      raw.offer([{ addr: PT, len: 32, flags: F_INDIRECT }], 1);
    },
    expect: {
      error: BufferOutOfBoundsError,
      fields: {
        code: "buffer-out-of-bounds",
        head: 1,
        index: 1,
        indirect: true,
        addr: MEM_END - 4,
        len: 8,
      },
    },
  },
  // ---- bounds ----
  {
    layout: "packed",
    name: "a buffer whose addr + len wraps 2^64",
    setup: (raw) => raw.offer([{ addr: 0xffff_ffff_ffff_fff0n, len: 0x20 }], 0),
    expect: {
      error: BufferOutOfBoundsError,
      fields: { code: "buffer-out-of-bounds", head: 0, index: 0, addr: WRAP_ADDR, len: 0x20 },
    },
  },
  {
    layout: "packed",
    name: "a zero-length buffer at address 2^53",
    setup: (raw) => raw.offer([{ addr: 2n ** 53n, len: 0 }], 0),
    expect: {
      error: BufferOutOfBoundsError,
      fields: { code: "buffer-out-of-bounds", head: 0, index: 0, addr: 2 ** 53, len: 0 },
    },
  },
  {
    layout: "packed",
    name: "a buffer ending exactly at the end of guest memory (boundary)",
    setup: (raw) => raw.offer([{ addr: MEM_END - 64, len: 64, flags: F_WRITE }], 0),
    expect: { valid: true, chain: { count: 1, writableBytes: 64 } },
  },
  {
    layout: "packed",
    name: "a buffer ending one byte past the end of guest memory",
    setup: (raw) => raw.offer([{ addr: MEM_END - 63, len: 64 }], 0),
    expect: {
      error: BufferOutOfBoundsError,
      fields: { code: "buffer-out-of-bounds", head: 0, index: 0, addr: MEM_END - 63, len: 64 },
    },
  },
  {
    layout: "packed",
    name: "a zero-length descriptor is accepted as an empty segment (boundary)",
    setup: (raw) =>
      raw.offer(
        [
          { addr: PD, len: 0 },
          { addr: PD, len: 4, flags: F_WRITE },
        ],
        0,
      ),
    expect: { valid: true, chain: { count: 2, readableBytes: 0, writableBytes: 4 } },
  },
  {
    layout: "packed",
    name: "a zero-length descriptor one byte past the end of guest memory",
    setup: (raw) => raw.offer([{ addr: MEM_END + 1, len: 0 }], 0),
    expect: {
      error: BufferOutOfBoundsError,
      fields: { code: "buffer-out-of-bounds", head: 0, index: 0, addr: MEM_END + 1, len: 0 },
    },
  },
  {
    layout: "packed",
    name: "a writable part of 2^32 bytes",
    memory: (raw) => permissiveMemory(raw.mem),
    setup: (raw) =>
      raw.offer(
        [
          { addr: PD, len: 0xffff_ffff, flags: F_WRITE },
          { addr: PD, len: 1, flags: F_WRITE },
        ],
        0,
      ),
    expect: {
      error: TotalLengthOverflowError,
      fields: { code: "total-length-overflow", head: 0, index: 1, indirect: false },
    },
  },
  {
    layout: "packed",
    name: "a readable part of 2^32 bytes inside an indirect table",
    memory: (raw) => permissiveMemory(raw.mem),
    setup: (raw) => {
      raw.writeTableEntry(PT, 0, { addr: PD, len: 0xffff_ffff });
      raw.writeTableEntry(PT, 1, { addr: PD, len: 1 });
      raw.offer([{ addr: PT, len: 32, flags: F_INDIRECT }], 0);
    },
    expect: {
      error: TotalLengthOverflowError,
      fields: { code: "total-length-overflow", head: 0, index: 1, indirect: true },
    },
  },
  {
    layout: "packed",
    name: "a chain of 2^32 bytes, readable and writable together (same rule as split)",
    memory: (raw) => permissiveMemory(raw.mem),
    setup: (raw) =>
      raw.offer(
        [
          { addr: PD, len: 0x8000_0000 },
          { addr: PD, len: 0x8000_0000, flags: F_WRITE },
        ],
        0,
      ),
    expect: {
      error: TotalLengthOverflowError,
      fields: { code: "total-length-overflow", head: 0, index: 1, indirect: false },
    },
  },
  // ---- event suppression ----
  {
    layout: "packed",
    name: "a driver event offset equal to the queue size (needsInterrupt)",
    features: EVENT_IDX,
    setup: (raw) => {
      raw.offer([{ addr: PD, len: 1 }], 0);
      raw.setDriverEvent(EV_DESC, 8);
    },
    act: (q, chain) => {
      q.pop(chain);
      q.push(chain.head, 0);
      return q.needsInterrupt();
    },
    expect: {
      error: EventOffsetOutOfRangeError,
      fields: { code: "event-offset-out-of-range", area: "driver", offWrap: 8, queueSize: 8 },
    },
  },
  {
    layout: "packed",
    name: "a driver event offset of 0x7fff with the wrap bit set (needsInterrupt)",
    features: EVENT_IDX,
    setup: (raw) => {
      raw.offer([{ addr: PD, len: 1 }], 0);
      raw.setDriverEvent(EV_DESC, 0xffff);
    },
    act: (q, chain) => {
      q.pop(chain);
      q.push(chain.head, 0);
      return q.needsInterrupt();
    },
    expect: {
      error: EventOffsetOutOfRangeError,
      fields: { code: "event-offset-out-of-range", area: "driver", offWrap: 0xffff, queueSize: 8 },
    },
  },
  {
    layout: "packed",
    name: "a driver event offset of queue size − 1 (boundary: a decision, no error)",
    features: EVENT_IDX,
    setup: (raw) => {
      raw.offer([{ addr: PD, len: 1 }], 0);
      raw.setDriverEvent(EV_DESC, 0x8000 | 7);
    },
    act: (q, chain) => {
      q.pop(chain);
      q.push(chain.head, 0);
      return q.needsInterrupt();
    },
    expect: { returns: true }, // first call after construction: previous index unknown
  },
  {
    layout: "packed",
    name: "an out-of-range event offset without EVENT_IDX is ignored (DESC treated as ENABLE)",
    features: { indirect: true },
    setup: (raw) => {
      raw.offer([{ addr: PD, len: 1 }], 0);
      raw.setDriverEvent(EV_DESC, 0x7fff);
    },
    act: (q, chain) => {
      q.pop(chain);
      q.push(chain.head, 0);
      return q.needsInterrupt();
    },
    expect: { returns: true },
  },
  {
    layout: "packed",
    name: "an out-of-range event offset under DISABLE is never read",
    features: EVENT_IDX,
    setup: (raw) => {
      raw.offer([{ addr: PD, len: 1 }], 0);
      raw.setDriverEvent(EV_DISABLE, 0x7fff);
    },
    act: (q, chain) => {
      q.pop(chain);
      q.push(chain.head, 0);
      return q.needsInterrupt();
    },
    expect: { returns: false },
  },
];

// ------------------------------------------------------------------------------------------
// Harness
// ------------------------------------------------------------------------------------------

function outcomeLabel(o: Outcome): string {
  if ("error" in o) return o.error.name;
  if ("valid" in o) return "valid";
  if ("empty" in o) return "nothing available";
  return `returns ${String(o.returns)}`;
}

/** Run the action; return the thrown value (or undefined) and the result. */
function attempt(fn: () => unknown): { threw: boolean; error?: unknown; result?: unknown } {
  try {
    return { threw: false, result: fn() };
  } catch (error) {
    return { threw: true, error };
  }
}

function assertOutcome(
  o: Outcome,
  r: ReturnType<typeof attempt>,
  chain: DescriptorChain,
  size: number,
) {
  if ("error" in o) {
    expect(r.threw, "the action should throw").toBe(true);
    const e = r.error;
    expect(e).toBeInstanceOf(VirtqueueError);
    expect(e).toBeInstanceOf(o.error);
    // Exactly this class, not a subclass or a sibling that happens to match.
    expect((e as object).constructor).toBe(o.error);
    expect(e).toMatchObject(o.fields);
    return;
  }
  if (r.threw) throw r.error; // surfaces the unexpected error with its stack
  if ("valid" in o) {
    expect(r.result).toBe(true);
    if (o.chain) expect(chain).toMatchObject(o.chain);
    expect(chain.count).toBeGreaterThanOrEqual(1);
    expect(chain.count).toBeLessThanOrEqual(size);
    let r2 = 0;
    for (let i = 0; i < chain.readableCount; i++) r2 += chain.len(i);
    expect(r2).toBe(chain.readableBytes);
  } else if ("empty" in o) {
    expect(r.result).toBe(false);
  } else {
    expect(r.result).toBe(o.returns);
  }
}

function runSplit(c: SplitCase) {
  const size = c.size ?? 8;
  const raw = new RawSplitRing(size);
  const base = c.memory ? c.memory(raw) : raw.mem;
  const { mem, counter } = countingMemory(base, raw.layout, true);
  const q = new SplitDeviceQueue(mem, raw.layout, features(c.features));
  const chain = new DescriptorChain(c.capacity ?? size);
  c.prepare?.(q);
  c.setup(raw);
  for (let i = 0; i < (c.prePops ?? 0); i++) expect(q.pop(chain)).toBe(true);
  counter.ops = 0;
  const r = attempt(() => (c.act ? c.act(q, chain, raw) : q.pop(chain)));
  // Bounded: one pop reads each descriptor (and each table entry) at most once.
  expect(counter.ops).toBeLessThanOrEqual(opBudget(size) * (c.act ? 2 : 1));
  assertOutcome(c.expect, r, chain, size);

  // Reset, then a well-formed chain written by hand pops correctly.
  q.reset();
  raw.availIdx = 0;
  raw.writeDesc(0, { addr: SD, len: 8, flags: F_NEXT, next: 1 });
  raw.writeDesc(1, { addr: SD + 0x100, len: 16, flags: F_WRITE });
  raw.offer(0);
  expect(q.pop(chain)).toBe(true);
  expect(chain).toMatchObject({
    head: 0,
    count: 2,
    readableCount: 1,
    readableBytes: 8,
    writableBytes: 16,
  });
  expect([chain.addr(0), chain.addr(1)]).toEqual([SD, SD + 0x100]);
  q.push(0, 16);
  expect(raw.usedElem(0)).toEqual({ id: 0, len: 16 });
  expect(q.pop(chain)).toBe(false);
}

function runPacked(c: PackedCase) {
  const size = c.size ?? 8;
  const raw = new RawPackedRing(size);
  const base = c.memory ? c.memory(raw) : raw.mem;
  const { mem, counter } = countingMemory(base, raw.layout, false);
  const q = new PackedDeviceQueue(mem, raw.layout, features(c.features));
  const chain = new DescriptorChain(c.capacity ?? size);
  c.prepare?.(q);
  c.setup(raw);
  for (let i = 0; i < (c.prePops ?? 0); i++) expect(q.pop(chain)).toBe(true);
  counter.ops = 0;
  const r = attempt(() => (c.act ? c.act(q, chain, raw) : q.pop(chain)));
  // Bounded: GuestMemory calls (table entries, buffer checks) and the cursor's descriptor count.
  expect(counter.ops).toBeLessThanOrEqual(opBudget(size) * (c.act ? 2 : 1));
  expect(chain.count).toBeLessThanOrEqual(Math.min(size, chain.capacity));
  expect(chain.descCount).toBeLessThanOrEqual(size);
  assertOutcome(c.expect, r, chain, size);

  q.reset();
  raw.nextAvail = 0;
  raw.availWrap = true;
  raw.offer(
    [
      { addr: PD, len: 8 },
      { addr: PD + 0x100, len: 16, flags: F_WRITE },
    ],
    1,
  );
  expect(q.pop(chain)).toBe(true);
  expect(chain).toMatchObject({
    head: 1,
    count: 2,
    descCount: 2,
    readableCount: 1,
    readableBytes: 8,
    writableBytes: 16,
  });
  expect([chain.addr(0), chain.addr(1)]).toEqual([PD, PD + 0x100]);
  q.push(1, 16);
  expect(raw.id(0)).toBe(1);
  expect(raw.len(0)).toBe(16);
  expect(raw.flags(0) & (F_AVAIL | F_USED)).toBe(F_AVAIL | F_USED);
}

const all: Case[] = [...split, ...packed];

describe("hostile-ring catalogue", () => {
  it("has at least 60 uniquely named rows, covering both layouts", () => {
    expect(all.length).toBeGreaterThanOrEqual(60);
    const names = all.map((c) => `${c.layout}: ${c.name}`);
    expect(new Set(names).size).toBe(names.length);
    expect(split.length).toBeGreaterThan(0);
    expect(packed.length).toBeGreaterThan(0);
  });

  for (const c of all) {
    it(`${c.layout}: ${c.name} → ${outcomeLabel(c.expect)}`, () => {
      if (c.layout === "split") runSplit(c);
      else runPacked(c);
    });
  }
});
