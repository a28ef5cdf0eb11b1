/**
 * The front-end's guest memory as SET_MEM_TABLE, ADD_MEM_REG and REM_MEM_REG describe it
 * (vhost-user.rst "Memory regions description", "Single memory region description"): every
 * region's fd mapped MAP_SHARED at its `mmap_offset`, a `GuestMemoryMap` over the mappings,
 * and the translation of front-end user addresses (SET_VRING_ADDR) to guest-physical ones.
 * Every field of the messages is untrusted, and so is the fd: see {@link mapMemoryFd} for
 * what keeps a front-end that shrinks its memory file from killing the process.
 * @module
 */
import { fstatSync } from "node:fs";
import { GuestMemoryMap } from "@virtio-ts/memory";
import { VhostUserBackendError } from "./errors.js";
import type { MemoryRegion } from "./messages.js";
import { FileSeal, type NativeMapping, type NativeWatch, type VhostUserNative } from "./native.js";

const PAGE = 4096;

/**
 * What the back-end does with a memory fd that can shrink under its mapping (no F_SEAL_SHRINK,
 * and it refuses the seal): `"guard"` maps it behind the native SIGBUS guard, so a shrink
 * closes only the connection that mapped it; `"refuse"` closes the connection at once.
 */
export type UnsealedMemoryPolicy = "guard" | "refuse";

/**
 * The mapped-bytes budget every connection of one back-end draws from (address space is the
 * resource a hostile front-end exhausts: 8 regions of 4 GiB per connection, connection after
 * connection, until mmap fails for everyone).
 * @internal
 */
export class MapBudget {
  /** The limit in bytes. */
  readonly limit: number;
  /** Bytes mapped now (released on unmap, explicit or when the buffer is collected). */
  used = 0;
  /** The highest `used` seen. */
  peak = 0;
  /** Mappings refused because they would pass the limit. */
  refusals = 0;
  readonly #collected = new FinalizationRegistry<{ bytes: number; slot: number }>((held) => {
    this.release(held.bytes);
    if (held.slot >= 0) faultWatch.unregister(held.slot);
  });

  constructor(limit: number) {
    this.limit = limit;
  }

  /** Take `bytes` from the budget, or return false (and count a refusal). */
  reserve(bytes: number): boolean {
    if (bytes > this.limit - this.used) {
      this.refusals++;
      return false;
    }
    this.used += bytes;
    if (this.used > this.peak) this.peak = this.used;
    return true;
  }

  /** Give `bytes` back. */
  release(bytes: number): void {
    this.used = Math.max(0, this.used - bytes);
  }

  /**
   * Give the mapping's bytes back (and forget its guard slot) when `buffer` is collected,
   * unless `forget` is called first.
   */
  track(buffer: ArrayBuffer, bytes: number, slot: number, token: object): void {
    this.#collected.register(buffer, { bytes, slot }, token);
  }

  /** The mapping was released explicitly: do not count it again when collected. */
  forget(token: object): void {
    this.#collected.unregister(token);
  }
}

/**
 * The process-wide listener of the native SIGBUS guard: one watcher on the guard's eventfd,
 * running while at least one guarded mapping has an owner, dispatching each faulted slot to
 * its owner.
 * @internal
 */
class FaultWatch {
  readonly #owners = new Map<number, () => void>();
  #native: VhostUserNative | undefined;
  #watch: NativeWatch | undefined;
  #fd = -1;

  register(native: VhostUserNative, slot: number, onFault: () => void): void {
    this.#owners.set(slot, onFault);
    if (this.#watch !== undefined) return;
    this.#native = native;
    this.#fd = native.faultFd();
    this.#watch = native.watch(this.#fd, () => this.#dispatch());
  }

  unregister(slot: number): void {
    if (!this.#owners.delete(slot) || this.#owners.size > 0 || this.#watch === undefined) return;
    // No guarded mapping left: stop watching, so the event loop can end.
    this.#native!.unwatch(this.#watch);
    this.#watch = undefined;
  }

  #dispatch(): void {
    const n = this.#native!;
    n.eventfdRead(this.#fd);
    for (const slot of n.takeFaults()) {
      const owner = this.#owners.get(slot);
      try {
        owner?.();
      } catch {
        // an owner's failure must not stop the others from hearing of theirs
      }
    }
  }
}

const faultWatch = new FaultWatch();

/** How {@link mapMemoryFd} treats the fd, and the counters it updates. @internal */
export interface MapPolicy {
  readonly native: VhostUserNative;
  readonly budget: MapBudget;
  readonly unsealed: UnsealedMemoryPolicy;
  /** Counts mappings by how they were made safe. */
  readonly counters: { sealed: number; guarded: number; faults: number };
}

/** One mapping of a front-end fd. @internal */
export class Mapping {
  /** The mapped bytes (page-aligned start; the region starts at `byteOffset`). */
  readonly buffer: ArrayBuffer;
  /** Where the region starts inside `buffer`. */
  readonly byteOffset: number;
  /** Bytes the region covers. */
  readonly size: number;
  /** SIGBUS guard slot (-1: the fd is sealed against shrinking, no guard needed). */
  readonly slot: number;
  /** Device and inode of the fd, to recognise the same file sent again. */
  readonly file: string;
  /** The offset in the file the region starts at. */
  readonly fileOffset: number;
  readonly #handle: NativeMapping;
  readonly #policy: MapPolicy;
  readonly #mapSize: number;
  #released = false;

  constructor(
    policy: MapPolicy,
    m: readonly [ArrayBuffer, bigint, NativeMapping, number],
    byteOffset: number,
    size: number,
    mapSize: number,
    file: string,
    fileOffset: number,
    onFault: () => void,
  ) {
    this.#policy = policy;
    this.buffer = m[0];
    this.#handle = m[2];
    this.slot = m[3];
    this.byteOffset = byteOffset;
    this.size = size;
    this.#mapSize = mapSize;
    this.file = file;
    this.fileOffset = fileOffset;
    policy.budget.track(m[0], mapSize, this.slot, this);
    if (this.slot >= 0) {
      faultWatch.register(policy.native, this.slot, () => {
        if (this.#released) return;
        policy.counters.faults++;
        onFault();
      });
    }
  }

  /** Bytes mapped (page-rounded). */
  get mapSize(): number {
    return this.#mapSize;
  }

  /** Whether {@link Mapping.release} ran. */
  get released(): boolean {
    return this.#released;
  }

  /**
   * Unmap now and give the bytes back to the budget (idempotent). Only once nothing uses the
   * memory (no ring runs over it, no back-end request is in flight): views over the buffer
   * become empty.
   */
  release(): void {
    if (this.#released) return;
    this.#released = true;
    this.#policy.budget.forget(this);
    this.#policy.budget.release(this.#mapSize);
    if (this.slot >= 0) faultWatch.unregister(this.slot);
    this.#policy.native.unmap(this.#handle, this.buffer);
  }
}

/**
 * Map `size` bytes at `offset` of a front-end's memory fd, MAP_SHARED.
 *
 * The fd must be a regular memory file (memfd, tmpfs, hugetlbfs) holding the whole range.
 * A file the front-end could shrink afterwards would make our accesses fault with SIGBUS,
 * which kills every connection with the process, so:
 * - sealed with F_SEAL_SHRINK (QEMU's memory-backend-memfd seals by default): mapped as is;
 * - a memfd that still accepts seals: the back-end adds F_SEAL_SHRINK itself (no front-end
 *   shrinks live guest RAM), then maps it;
 * - anything else (a memfd created without MFD_ALLOW_SEALING, a tmpfs or hugetlbfs file):
 *   with policy "guard", mapped behind the native SIGBUS guard — a shrink then replaces the
 *   mapping with zeros and reports its slot, and the owner closes that connection; with
 *   "refuse", refused.
 *
 * @throws VhostUserBackendError "bad-region" (not a memory file, too short, mmap failed, an
 *   unsealed fd under "refuse") or "limit" (the mapped-bytes budget is spent)
 * @internal
 */
export function mapMemoryFd(
  policy: MapPolicy,
  fd: number,
  offset: number,
  size: number,
  what: string,
  request: number,
  onFault: () => void,
): Mapping {
  const bad = (why: string): never => {
    throw new VhostUserBackendError("bad-region", `${what}: ${why}`, request);
  };
  let st: ReturnType<typeof fstatSync>;
  try {
    st = fstatSync(fd);
  } catch (e) {
    return bad(`fstat failed: ${(e as Error).message}`);
  }
  if (!st.isFile()) bad("the fd is not a memory file (memfd, shm, hugetlbfs)");
  if (offset + size > st.size) {
    bad(`mmap_offset + memory_size (${offset + size}) exceeds the fd's size (${st.size})`);
  }
  const n = policy.native;
  let seals = n.getSeals(fd);
  if (seals >= 0 && (seals & FileSeal.SHRINK) === 0 && (seals & FileSeal.SEAL) === 0) {
    if (n.addSeals(fd, FileSeal.SHRINK)) seals = n.getSeals(fd);
  }
  const sealed = seals >= 0 && (seals & FileSeal.SHRINK) !== 0;
  if (!sealed && policy.unsealed === "refuse") {
    bad(
      'the memory fd is not sealed against shrinking (F_SEAL_SHRINK) and cannot be sealed; this back-end refuses such memory (unsealedMemory: "refuse")',
    );
  }
  const inPage = offset % PAGE;
  const mapSize = Math.ceil((size + inPage) / PAGE) * PAGE;
  if (!policy.budget.reserve(mapSize)) {
    throw new VhostUserBackendError(
      "limit",
      `${what}: mapping ${mapSize} bytes would pass the back-end's limit of ${policy.budget.limit} mapped bytes (${policy.budget.used} in use)`,
      request,
    );
  }
  let m: [ArrayBuffer, bigint, NativeMapping, number] | null;
  try {
    m = n.mmapShared(fd, mapSize, offset - inPage, !sealed);
  } catch (e) {
    policy.budget.release(mapSize);
    return bad(`mmap failed: ${(e as Error).message}`);
  }
  if (m === null) {
    policy.budget.release(mapSize);
    return bad("the SIGBUS guard table is full");
  }
  if (sealed) policy.counters.sealed++;
  else policy.counters.guarded++;
  return new Mapping(policy, m, inPage, size, mapSize, `${st.dev}:${st.ino}`, offset, onFault);
}

/** A mapped region, for user-address translation. */
interface MappedRegion {
  readonly gpa: number;
  readonly size: number;
  readonly uaddr: bigint;
  readonly mapping: Mapping;
}

/**
 * The regions one connection has mapped (internal to the back-end). SET_MEM_TABLE replaces
 * them all, ADD_MEM_REG adds one, REM_MEM_REG removes one; each change builds a new
 * `GuestMemoryMap` (rings that run keep the one they started with). Replaced and removed
 * mappings are handed to {@link MemoryTable.retired} for the session to release once nothing
 * uses them.
 */
export class MemoryTable {
  readonly #policy: MapPolicy;
  readonly #maxRegions: number;
  readonly #onFault: () => void;
  #regions: MappedRegion[] = [];
  #memory: GuestMemoryMap | undefined = undefined;
  /** Mappings no longer in the table, not yet released. */
  retired: Mapping[] = [];

  /**
   * @param policy - mapping policy and budget
   * @param maxRegions - most regions at once
   * @param onFault - a guarded mapping of this table faulted (the front-end shrank its file)
   */
  constructor(policy: MapPolicy, maxRegions: number, onFault: () => void) {
    this.#policy = policy;
    this.#maxRegions = maxRegions;
    this.#onFault = onFault;
  }

  /** Guest memory over the regions (undefined while there are none). */
  get memory(): GuestMemoryMap | undefined {
    return this.#memory;
  }

  /** Number of regions. */
  get count(): number {
    return this.#regions.length;
  }

  /**
   * SET_MEM_TABLE: replace every region (the fds are the caller's to close afterwards: the
   * mappings stay). A table identical to the current one (same addresses, same files at the
   * same offsets: QEMU sends it again for each queue pair of a net device) keeps the mappings.
   * Refused with a {@link VhostUserBackendError} "bad-region" (no region, an empty one, ranges
   * past 2^53 or 2^64, unequal alignment, a bad fd, overlaps, too many regions) or "limit".
   */
  setAll(regions: readonly MemoryRegion[], fds: readonly number[], request: number): void {
    if (regions.length === 0) {
      throw new VhostUserBackendError("bad-region", "SET_MEM_TABLE with no regions", request);
    }
    this.#checkCount(regions.length, request);
    if (this.#sameAsCurrent(regions, fds)) return;
    const mapped: MappedRegion[] = [];
    try {
      regions.forEach((reg, i) => {
        mapped.push(this.#mapOne(reg, fds[i]!, `SET_MEM_TABLE region ${i}`, request));
      });
      this.#commit(mapped, request, "SET_MEM_TABLE");
    } catch (e) {
      for (const r of mapped) r.mapping.release();
      throw e;
    }
    this.retired.push(...this.#regions.map((r) => r.mapping));
    this.#regions = mapped;
  }

  /**
   * ADD_MEM_REG: add one region. The same region sent again (same addresses, same file and
   * offset) is kept as it is.
   */
  add(region: MemoryRegion, fd: number, request: number): void {
    if (this.#regions.some((r) => sameRegion(r, region, fd))) return;
    this.#checkCount(this.#regions.length + 1, request);
    const one = this.#mapOne(region, fd, "ADD_MEM_REG", request);
    const next = [...this.#regions, one];
    try {
      this.#commit(next, request, "ADD_MEM_REG");
    } catch (e) {
      one.mapping.release();
      throw e;
    }
    this.#regions = next;
  }

  /**
   * REM_MEM_REG: remove the region with this guest address, user address and size (the mmap
   * offset is ignored, vhost-user.rst).
   * @throws VhostUserBackendError "bad-region" if no region matches
   */
  remove(region: MemoryRegion, request: number): void {
    const at = this.#regions.findIndex(
      (r) =>
        BigInt(r.gpa) === region.guestPhysAddr &&
        BigInt(r.size) === region.memorySize &&
        r.uaddr === region.userspaceAddr,
    );
    if (at < 0) {
      throw new VhostUserBackendError(
        "bad-region",
        `REM_MEM_REG: no region at guest 0x${region.guestPhysAddr.toString(16)} of ${region.memorySize} bytes (user 0x${region.userspaceAddr.toString(16)})`,
        request,
      );
    }
    const gone = this.#regions[at]!;
    const next = this.#regions.filter((_, i) => i !== at);
    this.#memory = next.length === 0 ? undefined : buildMap(next, request, "REM_MEM_REG");
    this.#regions = next;
    this.retired.push(gone.mapping);
  }

  /**
   * The guest-physical address of front-end user address `uaddr` (vhost-user.rst "Vring
   * address description").
   * @throws VhostUserBackendError "bad-address" if it lies in no region
   */
  translate(uaddr: bigint, what: string, request: number): number {
    for (const r of this.#regions) {
      if (uaddr >= r.uaddr && uaddr < r.uaddr + BigInt(r.size)) {
        return r.gpa + Number(uaddr - r.uaddr);
      }
    }
    throw new VhostUserBackendError(
      "bad-address",
      `SET_VRING_ADDR: ${what} address 0x${uaddr.toString(16)} is outside every memory region`,
      request,
    );
  }

  /**
   * Retired mappings: unmap them now (`unmap`: nothing uses them any more) or leave them to
   * the garbage collector (something may: their buffers are unmapped once unreachable).
   */
  dropRetired(unmap: boolean): void {
    if (unmap) for (const m of this.retired) m.release();
    this.retired = [];
  }

  /** Retire every region (the connection is gone); then {@link MemoryTable.dropRetired}. */
  retireAll(): void {
    this.retired.push(...this.#regions.map((r) => r.mapping));
    this.#regions = [];
    this.#memory = undefined;
  }

  #checkCount(n: number, request: number): void {
    if (n > this.#maxRegions) {
      throw new VhostUserBackendError(
        "bad-region",
        `${n} memory regions; this back-end takes at most ${this.#maxRegions}`,
        request,
        n,
      );
    }
  }

  #sameAsCurrent(regions: readonly MemoryRegion[], fds: readonly number[]): boolean {
    if (regions.length !== this.#regions.length) return false;
    return regions.every((reg, i) => {
      const cur = this.#regions[i]!;
      return sameRegion(cur, reg, fds[i]!);
    });
  }

  #mapOne(reg: MemoryRegion, fd: number, what: string, request: number): MappedRegion {
    const bad = (why: string): never => {
      throw new VhostUserBackendError("bad-region", `${what}: ${why}`, request);
    };
    const max = BigInt(Number.MAX_SAFE_INTEGER);
    if (reg.memorySize === 0n) bad("empty");
    if (reg.guestPhysAddr + reg.memorySize > max) bad("guest range beyond 2^53");
    if (reg.mmapOffset + reg.memorySize > max) bad("mmap range beyond 2^53");
    if (reg.userspaceAddr + reg.memorySize > 1n << 64n) bad("user range beyond 2^64");
    const size = Number(reg.memorySize);
    const offset = Number(reg.mmapOffset);
    const gpa = Number(reg.guestPhysAddr);
    if ((gpa - offset) % 8 !== 0) bad("guest address and mmap offset are not equally aligned");
    const mapping = mapMemoryFd(this.#policy, fd, offset, size, what, request, this.#onFault);
    return { gpa, size, uaddr: reg.userspaceAddr, mapping };
  }

  /** Check `regions` and make them the memory (or throw without changing anything). */
  #commit(regions: readonly MappedRegion[], request: number, what: string): void {
    // User ranges must not overlap either, or a ring address would be ambiguous.
    const byU = [...regions].sort((a, b) => (a.uaddr < b.uaddr ? -1 : a.uaddr > b.uaddr ? 1 : 0));
    for (let i = 1; i < byU.length; i++) {
      if (byU[i]!.uaddr < byU[i - 1]!.uaddr + BigInt(byU[i - 1]!.size)) {
        throw new VhostUserBackendError(
          "bad-region",
          `${what}: user ranges overlap at 0x${byU[i]!.uaddr.toString(16)}`,
          request,
        );
      }
    }
    this.#memory = buildMap(regions, request, what);
  }
}

function sameRegion(cur: MappedRegion, reg: MemoryRegion, fd: number): boolean {
  if (
    BigInt(cur.gpa) !== reg.guestPhysAddr ||
    BigInt(cur.size) !== reg.memorySize ||
    cur.uaddr !== reg.userspaceAddr ||
    BigInt(cur.mapping.fileOffset) !== reg.mmapOffset
  ) {
    return false;
  }
  try {
    const st = fstatSync(fd);
    return `${st.dev}:${st.ino}` === cur.mapping.file;
  } catch {
    return false;
  }
}

function buildMap(regions: readonly MappedRegion[], request: number, what: string): GuestMemoryMap {
  try {
    return new GuestMemoryMap(
      regions.map((r) => ({
        guestBase: r.gpa,
        size: r.size,
        buffer: r.mapping.buffer,
        byteOffset: r.mapping.byteOffset,
      })),
    );
  } catch (e) {
    throw new VhostUserBackendError("bad-region", `${what}: ${(e as Error).message}`, request);
  }
}
