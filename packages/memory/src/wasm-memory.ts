import { GuestMemoryMap } from "./guest-memory.js";
import { hex } from "./limits.js";
import type { AccessKind, GuestMemory, StableRange } from "./types.js";

/**
 * The part of a `WebAssembly.Memory` that {@link WasmGuestMemory} needs: its current buffer.
 * Structural, so a JS emulator can pass whatever object holds its wasm memory.
 */
export interface WasmMemoryLike {
  /**
   * The current backing store. `WebAssembly.Memory.prototype.grow` replaces it with a larger
   * one and detaches the old one (every view over the old buffer then has length 0).
   */
  readonly buffer: ArrayBuffer | SharedArrayBuffer;
}

/** Options of {@link WasmGuestMemory}. */
export interface WasmGuestMemoryOptions {
  /** The wasm memory that holds guest RAM. */
  readonly memory: WasmMemoryLike;
  /** Where guest RAM starts inside the wasm memory (bytes). */
  readonly byteOffset: number;
  /** Size of guest RAM in bytes. */
  readonly size: number;
  /** Guest-physical address of the first byte of RAM (default 0). */
  readonly guestBase?: number;
  /**
   * Called (synchronously, once per replacement) when an access finds that the wasm memory's
   * buffer was replaced, after this object switched to the new buffer. Hosts use it to remap
   * the ring views of their devices (`VirtioDeviceCore.remapMemory`). It must not throw.
   */
  readonly onReplaced?: () => void;
}

/**
 * Guest RAM that lives inside a `WebAssembly.Memory`, as in JS/wasm emulators (v86 keeps the
 * guest's RAM in its wasm module's memory). Such a memory's `ArrayBuffer` is replaced whenever
 * the module grows its heap, and every view over the old buffer goes dead. This
 * {@link GuestMemory} checks the buffer's identity on every call (one comparison) and, when it
 * changed, rebuilds its region over the new buffer and calls `onReplaced`, so copies and
 * scalar accesses are always right. Views it handed out earlier (rings mapped by a device queue,
 * scatter-gather views of a request in flight) still point at the dead buffer: call
 * {@link WasmGuestMemory.refresh} at the host's entry points (after each emulator time slice,
 * at each trap) and remap the queues when it reports a change
 * (`VirtioDeviceCore.remapMemory`).
 *
 * @example
 * ```ts
 * const mem = new WasmGuestMemory({ memory: cpu.wasm_memory, byteOffset, size: ramSize });
 * mem.writeU32(0x1000, 7);
 * if (mem.refresh()) core.remapMemory(); // after the emulator ran
 * ```
 */
export class WasmGuestMemory implements GuestMemory {
  /** Whether the wasm memory is shared (a SharedArrayBuffer). */
  readonly shared: boolean;
  /** Guest-physical address of the first byte. */
  readonly guestBase: number;
  /** Size of guest RAM in bytes. */
  readonly size: number;
  /** Where guest RAM starts inside the wasm memory. */
  readonly byteOffset: number;
  /**
   * Guest RAM, `[guestBase, guestBase + size)`: it stays mapped and writable when the wasm
   * memory grows (its buffer is replaced, the addresses are not).
   */
  readonly stableRange: StableRange;
  /** Times the buffer was found replaced since construction. */
  replacements = 0;
  readonly #memory: WasmMemoryLike;
  readonly #onReplaced: (() => void) | undefined;
  #buffer: ArrayBuffer | SharedArrayBuffer;
  #map: GuestMemoryMap;

  /**
   * @param options - the wasm memory, where RAM is in it, its guest address
   * @throws RangeError naming `options.byteOffset` or `options.size` when RAM does not fit in
   *   the wasm memory's current buffer, or from {@link GuestMemoryMap} (alignment)
   */
  constructor(options: WasmGuestMemoryOptions) {
    const { memory, byteOffset, size } = options;
    this.#memory = memory;
    this.#buffer = memory.buffer;
    if (!Number.isSafeInteger(byteOffset) || byteOffset < 0) {
      throw new RangeError(`options.byteOffset must be a safe integer >= 0, got ${byteOffset}`);
    }
    if (!Number.isSafeInteger(size) || size <= 0 || byteOffset + size > this.#buffer.byteLength) {
      throw new RangeError(
        `options.size must be > 0 and fit in the wasm memory (${hex(this.#buffer.byteLength)} bytes from options.byteOffset ${hex(byteOffset)}), got ${size}`,
      );
    }
    this.byteOffset = byteOffset;
    this.size = size;
    this.guestBase = options.guestBase ?? 0;
    this.#onReplaced = options.onReplaced;
    this.#map = this.#build();
    this.shared = this.#map.shared;
    this.stableRange = Object.freeze({ start: this.guestBase, end: this.guestBase + size });
  }

  #build(): GuestMemoryMap {
    return new GuestMemoryMap([
      {
        guestBase: this.guestBase,
        size: this.size,
        buffer: this.#buffer,
        byteOffset: this.byteOffset,
      },
    ]);
  }

  /**
   * Follow the wasm memory to its current buffer.
   * @returns true if the buffer had been replaced (views made before are dead: remap them)
   */
  refresh(): boolean {
    const b = this.#memory.buffer;
    if (b === this.#buffer) return false;
    this.#buffer = b;
    this.#map = this.#build();
    this.replacements++;
    this.#onReplaced?.();
    return true;
  }

  /** The region map over the current buffer. */
  get #m(): GuestMemoryMap {
    if (this.#memory.buffer !== this.#buffer) this.refresh();
    return this.#map;
  }

  /** {@inheritDoc GuestMemory.check} */
  check(addr: number, len: number, access?: AccessKind): boolean {
    return this.#m.check(addr, len, access);
  }
  /** {@inheritDoc GuestMemory.readU8} */
  readU8(addr: number): number {
    return this.#m.readU8(addr);
  }
  /** {@inheritDoc GuestMemory.readU16} */
  readU16(addr: number): number {
    return this.#m.readU16(addr);
  }
  /** {@inheritDoc GuestMemory.readU32} */
  readU32(addr: number): number {
    return this.#m.readU32(addr);
  }
  /** {@inheritDoc GuestMemory.readU64} */
  readU64(addr: number): bigint {
    return this.#m.readU64(addr);
  }
  /** {@inheritDoc GuestMemory.writeU8} */
  writeU8(addr: number, value: number): void {
    this.#m.writeU8(addr, value);
  }
  /** {@inheritDoc GuestMemory.writeU16} */
  writeU16(addr: number, value: number): void {
    this.#m.writeU16(addr, value);
  }
  /** {@inheritDoc GuestMemory.writeU32} */
  writeU32(addr: number, value: number): void {
    this.#m.writeU32(addr, value);
  }
  /** {@inheritDoc GuestMemory.writeU64} */
  writeU64(addr: number, value: bigint): void {
    this.#m.writeU64(addr, value);
  }
  /** {@inheritDoc GuestMemory.read} */
  read(addr: number, dst: Uint8Array): void {
    this.#m.read(addr, dst);
  }
  /** {@inheritDoc GuestMemory.addressOf} */
  addressOf(view: ArrayBufferView): number | undefined {
    return this.#m.addressOf(view);
  }
  /** {@inheritDoc GuestMemory.write} */
  write(addr: number, src: Uint8Array): void {
    this.#m.write(addr, src);
  }
  /** {@inheritDoc GuestMemory.fill} */
  fill(addr: number, len: number, byte: number): void {
    this.#m.fill(addr, len, byte);
  }
  /** {@inheritDoc GuestMemory.slice} */
  slice(addr: number, len: number, access?: AccessKind): Uint8Array {
    return this.#m.slice(addr, len, access);
  }
  /** {@inheritDoc GuestMemory.dataView} */
  dataView(addr: number, len: number, access?: AccessKind): DataView {
    return this.#m.dataView(addr, len, access);
  }
  /** {@inheritDoc GuestMemory.u16View} */
  u16View(addr: number, count: number, access?: AccessKind): Uint16Array {
    return this.#m.u16View(addr, count, access);
  }
  /** {@inheritDoc GuestMemory.u32View} */
  u32View(addr: number, count: number, access?: AccessKind): Uint32Array {
    return this.#m.u32View(addr, count, access);
  }
  /** {@inheritDoc GuestMemory.sg} */
  sg(addr: number, len: number, out?: Uint8Array[], access?: AccessKind): Uint8Array[] {
    return this.#m.sg(addr, len, out, access);
  }
}
