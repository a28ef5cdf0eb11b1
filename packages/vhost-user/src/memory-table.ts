/**
 * The front-end's guest memory as SET_MEM_TABLE describes it (vhost-user.rst "Memory regions
 * description"): every region's fd mapped MAP_SHARED at its `mmap_offset`, a `GuestMemoryMap`
 * over the mappings, and the translation of front-end user addresses (SET_VRING_ADDR) to
 * guest-physical ones. Every field of the message is untrusted.
 * @module
 */
import { fstatSync } from "node:fs";
import { GuestMemoryMap } from "@virtio-ts/memory";
import { VhostUserBackendError } from "./errors.js";
import type { MemoryRegion } from "./messages.js";
import type { VhostUserNative } from "./native.js";

const PAGE = 4096;

/** A mapped SET_MEM_TABLE region, for user-address translation. */
interface MappedRegion {
  readonly gpa: number;
  readonly size: number;
  readonly uaddr: bigint;
}

/** One SET_MEM_TABLE's mapping (internal to the back-end). */
export class MemoryTable {
  /** Guest memory over the mapped regions. */
  readonly memory: GuestMemoryMap;
  readonly #regions: readonly MappedRegion[];

  private constructor(memory: GuestMemoryMap, regions: readonly MappedRegion[]) {
    this.memory = memory;
    this.#regions = regions;
  }

  /**
   * Map `regions` from their `fds` (one each, in order; the caller closes them afterwards: the
   * mappings stay). Refused with a {@link VhostUserBackendError} "bad-region": no region,
   * an empty region, ranges past 2^53 (or 2^64 for user addresses), a guest address and mmap
   * offset not equally aligned, an fd that is not a memory file or is too short for its range,
   * overlapping guest or user ranges, or a failed mmap.
   * @param native - the addon (mmap)
   * @param regions - decoded SET_MEM_TABLE regions
   * @param fds - their file descriptors
   * @param request - the message type, for the errors
   */
  static map(
    native: VhostUserNative,
    regions: readonly MemoryRegion[],
    fds: readonly number[],
    request: number,
  ): MemoryTable {
    if (regions.length === 0) {
      throw new VhostUserBackendError("bad-region", "SET_MEM_TABLE with no regions", request);
    }
    const mapped: MappedRegion[] = [];
    const options = regions.map((reg, i) => {
      const r = mapRegion(native, reg, fds[i]!, i, request);
      mapped.push({ gpa: r.guestBase, size: r.size, uaddr: reg.userspaceAddr });
      return r;
    });
    // User ranges must not overlap either, or a ring address would be ambiguous.
    const byU = [...mapped].sort((a, b) => (a.uaddr < b.uaddr ? -1 : a.uaddr > b.uaddr ? 1 : 0));
    for (let i = 1; i < byU.length; i++) {
      if (byU[i]!.uaddr < byU[i - 1]!.uaddr + BigInt(byU[i - 1]!.size)) {
        throw new VhostUserBackendError(
          "bad-region",
          `SET_MEM_TABLE: user ranges overlap at 0x${byU[i]!.uaddr.toString(16)}`,
          request,
        );
      }
    }
    let map: GuestMemoryMap;
    try {
      map = new GuestMemoryMap(options);
    } catch (e) {
      throw new VhostUserBackendError(
        "bad-region",
        `SET_MEM_TABLE: ${(e as Error).message}`,
        request,
      );
    }
    return new MemoryTable(map, mapped);
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
}

function mapRegion(
  native: VhostUserNative,
  reg: MemoryRegion,
  fd: number,
  i: number,
  request: number,
): { guestBase: number; size: number; buffer: ArrayBuffer; byteOffset: number } {
  const bad = (why: string): never => {
    throw new VhostUserBackendError("bad-region", `SET_MEM_TABLE region ${i}: ${why}`, request, i);
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
  let st: ReturnType<typeof fstatSync>;
  try {
    st = fstatSync(fd);
  } catch (e) {
    return bad(`fstat failed: ${(e as Error).message}`);
  }
  // Touching pages beyond the end of the file would raise SIGBUS: refuse such regions.
  if (!st.isFile()) bad("the fd is not a memory file (memfd, shm, hugetlbfs)");
  if (offset + size > st.size) {
    bad(`mmap_offset + memory_size (${offset + size}) exceeds the fd's size (${st.size})`);
  }
  const inPage = offset % PAGE;
  const mapSize = Math.ceil((size + inPage) / PAGE) * PAGE;
  try {
    const [buffer] = native.mmapShared(fd, mapSize, offset - inPage);
    return { guestBase: gpa, size, buffer, byteOffset: inPage };
  } catch (e) {
    return bad(`mmap failed: ${(e as Error).message}`);
  }
}
