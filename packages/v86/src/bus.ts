import { WasmGuestMemory } from "@virtio-ts/memory";
import {
  type DeviceModel,
  type PciBarMapping,
  type PciRegisterName,
  VirtioPciDevice,
  type VirtioPciDeviceOptions,
} from "@virtio-ts/transport";
import type { V86Cpu, V86Like, V86Pci, V86PortEntry } from "./internals.js";

/** PCI configuration mechanism #1 data port (CONFIG_DATA). */
const CONFIG_DATA = 0xcfc;
/** Where the PIIX3 keeps the PIRQA–D routing registers in its configuration space. */
const PIRQ_ROUTE = 0x60;
/** A PIRQ routing register with this bit set routes nowhere. */
const PIRQ_DISABLED = 0x80;
/** Configuration space offset of Interrupt Pin. */
const INTERRUPT_PIN = 0x3d;
/** v86's own functions sit at slots 0, 1, 5, 0x12, 0x1e (and 0x08–0x0c for its optional devices). */
const FIRST_FREE_SLOT = 0x14;

/** Options of {@link V86VirtioBus.attach}. */
export interface V86AttachOptions
  extends Pick<
    VirtioPciDeviceOptions,
    | "transportFeatures"
    | "log"
    | "notifyOffMultiplier"
    | "revisionId"
    | "subsystemVendorId"
    | "subsystemId"
    | "interruptPin"
  > {
  /**
   * PCI device number (slot) on bus 0, 1–31. Default: the first free slot from 0x14 (v86's own
   * functions use 0x00, 0x01, 0x05, 0x08–0x0c, 0x12 and 0x1e).
   */
  readonly slot?: number;
  /** Name in v86's PCI debug log (default `virtio-ts <device id>`). */
  readonly name?: string;
}

/** Options of {@link V86VirtioBus.of}. */
export interface V86BusOptions {
  /**
   * Bytes of free heap to give v86's wasm allocator up front (default 16 MiB; 0 for none).
   * v86 grows its wasm memory while it runs (its JIT allocates), which replaces the buffer
   * guest RAM lives in; ring views are then remapped (`VirtioDeviceCore.remapMemory`), but a
   * data view an asynchronous back-end holds across the grow cannot be. Allocating and freeing
   * this much once leaves the allocator a free block to serve later allocations from, so in
   * practice the memory stops growing after attach (measured: a whole Linux boot fits in
   * 14 MiB). Needs the `zstd_create_ctx` / `zstd_free_ctx` exports of v86's wasm module.
   */
  readonly heapHeadroom?: number;
  /**
   * Called with an exception a device handler threw (a host bug: guest input never throws);
   * the access then reads all ones or is dropped, and v86 keeps running. Default: kept in
   * {@link V86VirtioBus.lastError} and counted.
   */
  readonly onError?: (error: unknown) => void;
}

/** Counters of a {@link V86VirtioBus}. */
export interface V86BusStats {
  /** Times guest RAM's buffer was found replaced (v86's wasm memory grew). */
  memoryReplacements: number;
  /** Exceptions thrown by a device handler (host bugs), caught so v86 keeps running. */
  handlerErrors: number;
}

const buses = new WeakMap<V86Cpu, V86VirtioBus>();

/**
 * virtio-ts devices on one v86 emulator's PCI bus. It owns what the devices share: guest RAM
 * as a {@link WasmGuestMemory} over v86's wasm memory (remapping every device's rings when
 * v86 grows it), the configuration-space hooks (v86's CONFIG_DATA port handlers and
 * `pci_write8/16/32` answer for the functions attached here, other functions are untouched),
 * and a wired-OR of the INTx levels per ISA IRQ (v86's PIC keeps one level bit per IRQ, and
 * several functions share PIRQA–D).
 *
 * Attach devices after v86 created its machine (the `emulator-ready` or `emulator-loaded`
 * event) and before the BIOS runs (`autostart: false`, then `emulator.run()`), since v86 has
 * no PCI hot-plug and SeaBIOS assigns the BARs and IRQ lines at boot.
 *
 * Only I/O BARs and INTx: v86 cannot move memory BARs (`pci.js` resets them to their initial
 * value) and maps MMIO in 128 KiB blocks, and without an APIC setup it delivers no MSI. v86's
 * own `save_state` does not include these devices: `saveV86` / `restoreV86` save and restore
 * both together.
 *
 * @example
 * ```ts
 * const emulator = new V86({ ...options, autostart: false });
 * emulator.add_listener("emulator-loaded", () => {
 *   const bus = V86VirtioBus.of(emulator);
 *   bus.attach(new RngDevice(randomSource));
 *   emulator.run();
 * });
 * ```
 */
export class V86VirtioBus {
  /** Guest RAM, following v86's wasm memory. */
  readonly memory: WasmGuestMemory;
  /** The attached devices, in attach order. */
  readonly devices: V86VirtioDevice[] = [];
  /** Counters (mutated in place). */
  readonly stats: V86BusStats = { memoryReplacements: 0, handlerErrors: 0 };
  readonly #cpu: V86Cpu;
  readonly #pci: V86Pci;
  readonly #byBdf = new Map<number, V86VirtioDevice>();
  readonly #irqLevel = new Uint16Array(16);
  readonly #onError: ((error: unknown) => void) | undefined;
  /** The last exception a device handler threw (see {@link V86BusOptions.onError}). */
  lastError: unknown = undefined;

  /**
   * The bus of `emulator`, created (and v86 hooked) on the first call.
   * @param emulator - a loaded `V86` (its `v86.cpu` exists)
   * @param options - heap headroom (used on the first call only)
   * @throws TypeError naming what is missing when `emulator` is not a loaded v86 with a PCI bus
   */
  static of(emulator: V86Like, options: V86BusOptions = {}): V86VirtioBus {
    const cpu = emulator?.v86?.cpu;
    if (cpu === undefined || cpu === null) {
      throw new TypeError(
        "emulator.v86.cpu is missing: attach after the emulator-ready or emulator-loaded event",
      );
    }
    let bus = buses.get(cpu);
    if (bus === undefined) {
      bus = new V86VirtioBus(cpu, options);
      buses.set(cpu, bus);
    }
    return bus;
  }

  private constructor(cpu: V86Cpu, options: V86BusOptions) {
    const pci = cpu.devices.pci;
    if (pci === undefined) throw new TypeError("emulator.v86.cpu.devices.pci is missing");
    this.#cpu = cpu;
    this.#pci = pci;
    this.#onError = options.onError;
    reserveHeap(cpu, options.heapHeadroom ?? 16 * 1024 * 1024);
    this.memory = new WasmGuestMemory({
      memory: cpu.wasm_memory,
      byteOffset: cpu.mem8.byteOffset,
      size: cpu.memory_size[0]!,
      onReplaced: () => {
        this.stats.memoryReplacements++;
        for (const d of this.devices) d.pci.core.remapMemory();
      },
    });
    this.#hookConfigSpace();
    // v86 grows its memory only while it runs guest code: look after every time slice, so
    // timers and I/O completions that run between slices find live views.
    const mainLoop = cpu.main_loop;
    cpu.main_loop = () => {
      const t = mainLoop.call(cpu);
      this.memory.refresh();
      return t;
    };
  }

  /**
   * Put `model` on the bus as a virtio-pci function (modern, I/O BAR 0, INTx).
   * @param model - any virtio-ts device model
   * @param options - slot, name, and the {@link VirtioPciDevice} options v86 leaves open
   * @returns the attached device
   * @throws RangeError naming `options.slot` when it is out of range or taken
   */
  attach(model: DeviceModel, options: V86AttachOptions = {}): V86VirtioDevice {
    const { slot: wanted, name, ...pciOptions } = options;
    const slot = wanted ?? this.#freeSlot();
    if (!Number.isInteger(slot) || slot < 1 || slot > 31) {
      throw new RangeError(`options.slot must be an integer in [1, 31], got ${slot}`);
    }
    const bdf = slot << 3;
    if (this.#pci.devices[bdf] !== undefined) {
      throw new RangeError(
        `options.slot ${slot} is taken by v86's ${this.#pci.devices[bdf]?.name ?? "device"}`,
      );
    }
    const device = new V86VirtioDevice(this, this.#cpu, slot, model, pciOptions);
    const space = this.#pci.register_device({
      pci_id: bdf,
      pci_space: Array.from(device.pci.configSpace),
      pci_bars: [],
      name: name ?? `virtio-ts ${model.deviceId}`,
    });
    device.v86Space = new Uint8Array(space.buffer, space.byteOffset, space.byteLength);
    this.devices.push(device);
    this.#byBdf.set(bdf, device);
    return device;
  }

  #freeSlot(): number {
    for (let s = FIRST_FREE_SLOT; s < 32; s++)
      if (this.#pci.devices[s << 3] === undefined) return s;
    for (let s = 2; s < FIRST_FREE_SLOT; s++) if (this.#pci.devices[s << 3] === undefined) return s;
    throw new RangeError("no free PCI slot on v86's bus 0");
  }

  /** Follow guest RAM before a handler touches it (v86 may have grown it earlier in the slice). */
  enter(): void {
    this.memory.refresh();
  }

  /** Count a handler's exception and keep v86 running. */
  handlerError(e: unknown): void {
    this.stats.handlerErrors++;
    this.lastError = e;
    this.#onError?.(e);
  }

  /** Raise ISA IRQ `irq` on behalf of one function (wired-OR with the others on it). */
  raise(irq: number): void {
    if (this.#irqLevel[irq]!++ === 0) this.#cpu.device_raise_irq(irq);
  }

  /** Lower one function's contribution to ISA IRQ `irq`. */
  lower(irq: number): void {
    if (this.#irqLevel[irq]! > 0 && --this.#irqLevel[irq]! === 0) this.#cpu.device_lower_irq(irq);
  }

  /** The ISA IRQ the PIIX3 routes PIRQ `pirq` (0–3) to now, undefined when disabled. */
  routedIrq(pirq: number): number | undefined {
    const r = this.#pci.isa_bridge_space8[PIRQ_ROUTE + pirq]!;
    return (r & PIRQ_DISABLED) !== 0 ? undefined : r & 0x0f;
  }

  /** The attached function CONFIG_ADDRESS selects, when enabled and ours. */
  #selected(): V86VirtioDevice | undefined {
    const a = this.#pci.pci_addr32[0]!;
    // Bit 31 (enable) set reads as a negative Int32.
    if (a >= 0) return undefined;
    return this.#byBdf.get((a >>> 8) & 0xffff);
  }

  #hookConfigSpace(): void {
    const bus = this;
    const pci = this.#pci;
    const ports = this.#cpu.io.ports;
    // Reads: the data port handlers (v86 latches other functions' values when CONFIG_ADDRESS
    // is written; ours are read at the access, so the pci_cfg_data window's read side effect
    // happens exactly when the guest reads).
    for (let k = 0; k < 4; k++) {
      const e: V86PortEntry = ports[CONFIG_DATA + k]!;
      const o8 = e.read8;
      const o16 = e.read16;
      const o32 = e.read32;
      e.read8 = function (this: unknown, port: number): number {
        return bus.#configRead(k, 1) ?? o8.call(this, port);
      };
      if (k % 2 === 0) {
        e.read16 = function (this: unknown, port: number): number {
          return bus.#configRead(k, 2) ?? o16.call(this, port);
        };
      }
      if (k === 0) {
        e.read32 = function (this: unknown, port: number): number {
          const v = bus.#configRead(0, 4);
          return v === undefined ? o32.call(this, port) : v | 0;
        };
      }
    }
    const w8 = pci.pci_write8;
    const w16 = pci.pci_write16;
    const w32 = pci.pci_write32;
    pci.pci_write8 = function (this: V86Pci, address: number, value: number): void {
      if (!bus.#configWrite(address, 1, value)) w8.call(this, address, value);
    };
    pci.pci_write16 = function (this: V86Pci, address: number, value: number): void {
      if (!bus.#configWrite(address, 2, value)) w16.call(this, address, value);
    };
    pci.pci_write32 = function (this: V86Pci, address: number, value: number): void {
      if (!bus.#configWrite(address, 4, value)) w32.call(this, address, value);
    };
  }

  #configRead(k: number, size: number): number | undefined {
    const d = this.#selected();
    if (d === undefined) return undefined;
    this.enter();
    try {
      return d.pci.configRead((this.#pci.pci_addr32[0]! & 0xfc) + k, size);
    } catch (e) {
      this.handlerError(e);
      return size === 4 ? -1 : (1 << (8 * size)) - 1;
    }
  }

  #configWrite(address: number, size: number, value: number): boolean {
    if (address >= 0) return false;
    const d = this.#byBdf.get((address >>> 8) & 0xffff);
    if (d === undefined) return false;
    this.enter();
    try {
      d.pci.configWrite(address & 0xff, size, value >>> 0);
    } catch (e) {
      this.handlerError(e);
    }
    d.v86Space?.set(d.pci.configSpace.subarray(0, d.v86Space.length));
    return true;
  }
}

/** Give v86's wasm allocator `bytes` of free heap (see {@link V86BusOptions.heapHeadroom}). */
function reserveHeap(cpu: V86Cpu, bytes: number): void {
  const create = cpu.zstd_create_ctx;
  const free = cpu.zstd_free_ctx;
  if (bytes <= 0 || create === undefined || free === undefined) return;
  const start = cpu.wasm_memory.buffer.byteLength;
  const held: number[] = [];
  // Blocks below the allocator's mmap threshold come from (and return to) its main heap.
  for (let i = 0; i < 4096 && cpu.wasm_memory.buffer.byteLength - start < bytes; i++) {
    held.push(create.call(cpu, 64 * 1024));
  }
  for (const h of held) free.call(cpu, h);
}

/**
 * One virtio-ts device model on v86's PCI bus: its {@link VirtioPciDevice} (registers, traps,
 * interrupt counters) and the v86 side (I/O port handlers where the guest put BAR 0, the INTx
 * line routed through the PIIX3's PIRQ registers).
 */
export class V86VirtioDevice {
  /** The virtio-pci function (configuration space, BARs, the device core). */
  readonly pci: VirtioPciDevice;
  /** The device model. */
  readonly model: DeviceModel;
  /** PCI slot on bus 0. */
  readonly slot: number;
  /** @internal v86's copy of the configuration space, kept equal to ours. */
  v86Space: Uint8Array | undefined = undefined;
  readonly #bus: V86VirtioBus;
  readonly #io: V86Cpu["io"];
  /** Port entries BAR `i` replaced, to put back when it moves or is disabled. */
  readonly #saved: (V86PortEntry[] | undefined)[] = [];
  readonly #mapped: (PciBarMapping | undefined)[] = [];
  #assertedIrq: number | undefined = undefined;

  /** @internal Use {@link V86VirtioBus.attach}. */
  constructor(
    bus: V86VirtioBus,
    cpu: V86Cpu,
    slot: number,
    model: DeviceModel,
    options: Omit<VirtioPciDeviceOptions, "memory" | "host">,
  ) {
    this.#bus = bus;
    this.#io = cpu.io;
    this.slot = slot;
    this.model = model;
    this.pci = new VirtioPciDevice(model, {
      ...options,
      memory: bus.memory,
      bar: "io",
      msixVectors: 0,
      host: {
        mapBar: (bar, mapping) => this.#mapBar(bar, mapping),
        setIntx: (asserted) => this.#setIntx(asserted),
      },
    });
  }

  /** Register accesses (traps) served, configuration space included. */
  get traps(): number {
    return this.pci.exits;
  }

  /** Traps by register name. */
  trapCounts(): Partial<Record<PciRegisterName, number>> {
    return this.pci.exitCounts();
  }

  /** Interrupts raised (INTx assertions). */
  get interrupts(): number {
    return this.pci.stats.intxAssertions;
  }

  /** The ISA IRQ this function's INTx pin is routed to now (undefined: not routed). */
  get irq(): number | undefined {
    const pin = this.pci.configSpace[INTERRUPT_PIN]!;
    if (pin === 0) return undefined;
    // PCI-to-PCI bridge swizzle as v86 (and QEMU's PIIX) wire bus 0: PIRQ = (pin - 1 + slot - 1) mod 4.
    return this.#bus.routedIrq((pin - 1 + this.slot - 1) & 3);
  }

  /** Where BAR `bar` is decoded in port space now. */
  barMapping(bar: number): PciBarMapping | undefined {
    return this.#mapped[bar];
  }

  #mapBar(bar: number, mapping: PciBarMapping | undefined): void {
    const ports = this.#io.ports;
    const prev = this.#mapped[bar];
    const saved = this.#saved[bar];
    if (prev !== undefined && saved !== undefined) {
      for (let i = 0; i < prev.size; i++) ports[prev.address + i] = saved[i]!;
    }
    this.#mapped[bar] = undefined;
    this.#saved[bar] = undefined;
    if (mapping === undefined || mapping.space !== "io") return;
    const keep: V86PortEntry[] = [];
    for (let i = 0; i < mapping.size; i++) {
      keep.push(ports[mapping.address + i]!);
      ports[mapping.address + i] = this.#portEntry(bar, i);
    }
    this.#saved[bar] = keep;
    this.#mapped[bar] = mapping;
  }

  /** Handlers for byte `off` of BAR `bar` (created when the BAR is mapped, not per access). */
  #portEntry(bar: number, off: number): V86PortEntry {
    const bus = this.#bus;
    const pci = this.pci;
    const read = (size: number): number => {
      bus.enter();
      try {
        return pci.barRead(bar, off, size);
      } catch (e) {
        bus.handlerError(e);
        return size === 4 ? 0xffffffff : (1 << (8 * size)) - 1;
      }
    };
    const write = (size: number, value: number): void => {
      bus.enter();
      try {
        pci.barWrite(bar, off, size, value);
      } catch (e) {
        bus.handlerError(e);
      }
    };
    return {
      read8: () => read(1),
      read16: () => read(2),
      read32: () => read(4) | 0,
      write8: (v) => write(1, v & 0xff),
      write16: (v) => write(2, v & 0xffff),
      write32: (v) => write(4, v >>> 0),
      device: this,
    };
  }

  #setIntx(asserted: boolean): void {
    if (asserted) {
      if (this.#assertedIrq !== undefined) return;
      const irq = this.irq;
      if (irq === undefined) return;
      this.#assertedIrq = irq;
      this.#bus.raise(irq);
    } else if (this.#assertedIrq !== undefined) {
      this.#bus.lower(this.#assertedIrq);
      this.#assertedIrq = undefined;
    }
  }
}
