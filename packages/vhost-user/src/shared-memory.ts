/**
 * Guest memory another process can map: a memfd mapped MAP_SHARED into an ArrayBuffer and
 * wrapped as a `GuestMemoryMap` region, plus the description vhost-user's SET_MEM_TABLE sends.
 * @module
 */
import { GuestMemoryMap } from "@virtio-ts/memory";
import type { MemoryRegion } from "./messages.js";
import { FileSeal, loadNative } from "./native.js";

const PAGE = 4096;

/** One region of a {@link SharedGuestMemory}: what SET_MEM_TABLE describes, with its fd. */
export interface SharedRegion extends MemoryRegion {
  /** The memfd backing the region (sent to the back-end with SCM_RIGHTS). Owned by the memory. */
  readonly fd: number;
  /** Guest-physical address of the first byte, as a number. */
  readonly guestBase: number;
  /** Size in bytes, as a number. */
  readonly size: number;
}

/** Options of {@link createSharedMemory}. */
export interface SharedMemoryOptions {
  /** Size in bytes: a positive multiple of 4096 below 2^53. */
  readonly size: number;
  /** Guest-physical address of the first byte (default 0): a multiple of 4096. */
  readonly guestBase?: number;
  /** memfd name, shown in /proc/PID/fd (default "virtio-ts-guest"). */
  readonly name?: string;
}

/**
 * Guest memory in a memfd mapped MAP_SHARED: this process reads and writes it through
 * `memory` (a {@link GuestMemoryMap} over the mapping), a vhost-user back-end maps the same
 * pages from the fd. Both sides write the rings, so the ring words are accessed with `Atomics`
 * by the queues (the mapping is a plain ArrayBuffer; Atomics work on it all the same).
 */
export interface SharedGuestMemory {
  /** The guest memory, one region per {@link SharedGuestMemory.regions} entry. */
  readonly memory: GuestMemoryMap;
  /** The regions with their fds, user addresses and offsets, for SET_MEM_TABLE. */
  readonly regions: readonly SharedRegion[];
  /**
   * The front-end virtual ("user") address of guest address `addr` when `[addr, addr + len)`
   * lies in one region; vhost-user gives ring addresses as user addresses (SET_VRING_ADDR).
   * @param addr - guest-physical address
   * @param len - bytes that must lie in the same region
   * @returns the user address, or undefined if the range is not shared
   */
  userAddress(addr: number, len: number): bigint | undefined;
  /**
   * Close the fds (idempotent). The mapping stays valid until the buffer is garbage collected
   * (its finalizer unmaps it); a back-end keeps its own mapping.
   */
  close(): void;
}

function checkPaged(v: number, name: string, min: number): void {
  if (!Number.isSafeInteger(v) || v < min || v % PAGE !== 0) {
    throw new RangeError(`${name} must be a multiple of 4096 of at least ${min}, got ${v}`);
  }
}

/**
 * Create guest memory in a new memfd, mapped MAP_SHARED. The memfd is sealed against growing
 * and shrinking (F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL, as QEMU's memory-backend-memfd
 * does by default), so a back-end mapping it never faults.
 * @param options - size, guest base, name
 * @returns the memory, its region description and fd
 * @throws RangeError naming `options.size` or `options.guestBase`; NativeAddonMissingError if
 *   the addon is not built; Error "E<errno>" if memfd_create / ftruncate / mmap fail
 */
export function createSharedMemory(options: SharedMemoryOptions): SharedGuestMemory {
  const guestBase = options.guestBase ?? 0;
  checkPaged(options.size, "options.size", PAGE);
  checkPaged(guestBase, "options.guestBase", 0);
  if (!Number.isSafeInteger(guestBase + options.size)) {
    throw new RangeError("options.guestBase + options.size must be below 2^53");
  }
  const name = options.name ?? "virtio-ts-guest";
  if (typeof name !== "string" || name.length === 0 || name.length > 63) {
    throw new RangeError("options.name must be a string of 1 to 63 characters");
  }
  const n = loadNative();
  // Sealed like QEMU's memory-backend-memfd (seal=on): the back-end that maps it can rely on
  // its size (a shrunk memfd would fault its mapping with SIGBUS).
  const fd = n.memfdCreate(name, options.size, true);
  let buffer: ArrayBuffer;
  let addr: bigint;
  try {
    if (!n.addSeals(fd, FileSeal.GROW | FileSeal.SHRINK | FileSeal.SEAL)) {
      throw new Error("cannot seal the new memfd (F_ADD_SEALS refused)");
    }
    const m = n.mmapShared(fd, options.size, 0);
    if (m === null) throw new Error("mmap failed");
    [buffer, addr] = m;
  } catch (e) {
    n.closeFd(fd);
    throw e;
  }
  const region: SharedRegion = {
    fd,
    guestBase,
    size: options.size,
    guestPhysAddr: BigInt(guestBase),
    memorySize: BigInt(options.size),
    userspaceAddr: addr,
    mmapOffset: 0n,
  };
  const memory = new GuestMemoryMap([{ guestBase, size: options.size, buffer }]);
  let open = true;
  return {
    memory,
    regions: [region],
    userAddress(a: number, len: number): bigint | undefined {
      if (!Number.isSafeInteger(a) || !Number.isSafeInteger(len) || a < 0 || len < 0) {
        return undefined;
      }
      if (a < region.guestBase || len > region.guestBase + region.size - a) return undefined;
      return region.userspaceAddr + BigInt(a - region.guestBase);
    },
    close(): void {
      if (!open) return;
      open = false;
      n.closeFd(fd);
    },
  };
}

/** A MAP_SHARED mapping made by {@link mapSharedFd}. */
export interface MappedFd {
  /** The mapped bytes (unmapped when the buffer is garbage collected). */
  readonly buffer: ArrayBuffer;
  /** The mapping's address in this process (a back-end translates user addresses with it). */
  readonly address: bigint;
}

/**
 * Map `size` bytes at `offset` of a memory fd (a memfd received with SET_MEM_TABLE, say)
 * MAP_SHARED into an ArrayBuffer, the way a back-end maps the front-end's memory.
 * @param fd - the memory fd (stays open; close it when no longer needed)
 * @param size - bytes to map: a positive multiple of 4096
 * @param offset - offset in the fd: a multiple of 4096 (default 0)
 * @returns the buffer (unmapped when collected) and its address in this process
 * @throws RangeError naming `fd`, `size` or `offset`; Error "E<errno>" if mmap fails
 */
export function mapSharedFd(fd: number, size: number, offset = 0): MappedFd {
  if (!Number.isInteger(fd) || fd < 0 || fd > 0x7fffffff) {
    throw new RangeError(`fd must be a file descriptor number, got ${fd}`);
  }
  checkPaged(size, "size", PAGE);
  checkPaged(offset, "offset", 0);
  const m = loadNative().mmapShared(fd, size, offset);
  if (m === null) throw new Error("mmap failed");
  return { buffer: m[0], address: m[1] };
}
