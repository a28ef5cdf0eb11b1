/**
 * The parts of v86's internals (0.5.x, the npm release build) this adapter reaches. v86's own
 * typings cover only its public `V86` API, so they are described here structurally; every name
 * below survives the release build's minifier (checked against v86 0.5.462). Source references
 * are to copy/v86: `src/pci.js`, `src/io.js`, `src/cpu.js`, `src/main.js`.
 */

/** One I/O port's handlers (`src/io.js`, `IO.create_empty_entry`). Called with `this = device`. */
export interface V86PortEntry {
  /** 8-bit read handler. */
  read8: (this: unknown, port: number) => number;
  /** 16-bit read handler. */
  read16: (this: unknown, port: number) => number;
  /** 32-bit read handler (returns a signed 32-bit integer). */
  read32: (this: unknown, port: number) => number;
  /** 8-bit write handler. */
  write8: (this: unknown, value: number) => void;
  /** 16-bit write handler. */
  write16: (this: unknown, value: number) => void;
  /** 32-bit write handler. */
  write32: (this: unknown, value: number) => void;
  /** The `this` of the handlers. */
  device: unknown;
}

/** v86's port I/O dispatcher (`src/io.js`). */
export interface V86IO {
  /** 65536 entries, one per port. */
  ports: V86PortEntry[];
  /** A fresh entry whose reads return all ones and whose writes are ignored. */
  create_empty_entry(): V86PortEntry;
}

/** An I/O BAR v86 moves by itself. */
export interface V86PciBar {
  /** Size in bytes (a power of 2). */
  size: number;
}

/** Guest RAM as v86 exposes it (`cpu.mem8`, a proxy over the wasm memory). */
export interface V86Ram {
  /** Where RAM starts inside `wasm_memory`. */
  readonly byteOffset: number;
  /** RAM size in bytes. */
  readonly length: number;
}

/** A WebAssembly memory, as far as this adapter reads it. */
export interface V86WasmMemory {
  /** The current buffer (replaced, and the old one detached, when the memory grows). */
  readonly buffer: ArrayBuffer;
}

/** v86's device table (`cpu.devices`). */
export interface V86Devices {
  /** The PCI bus. */
  pci?: V86Pci;
  /** v86's other devices, by name. */
  [name: string]: unknown;
}

/** The machine object of a loaded emulator (`emulator.v86`). */
export interface V86Machine {
  /** The emulated CPU and its devices. */
  cpu: V86Cpu;
  /**
   * v86's state, taken synchronously (`src/main.js`; the public `V86.save_state` wraps it in
   * a promise). Optional: only used when present.
   */
  save_state?(): ArrayBuffer;
}

/** A device as v86's PCI bus records it (`PCI.register_device`). */
export interface V86PciDeviceRecord {
  /** Bus/device/function number: `slot << 3 | function`. */
  pci_id: number;
  /** The first 64 (or 256) bytes of configuration space, byte by byte. */
  pci_space: number[];
  /** I/O BARs v86 should move itself; empty for devices that handle their BARs. */
  pci_bars: (V86PciBar | undefined)[];
  /** Shown in v86's debug log. */
  name: string;
}

/** v86's PCI host bridge and configuration mechanism #1 (`src/pci.js`). */
export interface V86Pci {
  /** The CONFIG_ADDRESS register (port 0xcf8) as one signed 32-bit word. */
  pci_addr32: Int32Array;
  /** Configuration space of each registered function, by bdf (64 signed 32-bit words). */
  device_spaces: (Int32Array | undefined)[];
  /** Registered functions, by bdf. */
  devices: (V86PciDeviceRecord | undefined)[];
  /** The PIIX3 ISA bridge's configuration space; bytes 0x60–0x63 route PIRQA–D to ISA IRQs. */
  isa_bridge_space8: Uint8Array;
  /** Add a function to the bus; returns the configuration space array v86 keeps for it. */
  register_device(device: V86PciDeviceRecord): Int32Array;
  /** A byte written to CONFIG_DATA (port 0xcfc + n): `address` is CONFIG_ADDRESS + n. */
  pci_write8(address: number, value: number): void;
  /** A 16-bit word written to CONFIG_DATA. */
  pci_write16(address: number, value: number): void;
  /** A 32-bit word written to CONFIG_DATA. */
  pci_write32(address: number, value: number): void;
}

/** The emulated CPU and its devices (`src/cpu.js`). */
export interface V86Cpu {
  /** The wasm module's memory; guest RAM is inside it and it grows (replacing its buffer). */
  wasm_memory: V86WasmMemory;
  /** Guest RAM (a proxy whose `byteOffset` is where RAM starts in `wasm_memory`). */
  mem8: V86Ram;
  /** `memory_size[0]` is the guest RAM size in bytes. */
  memory_size: Uint32Array;
  /** The port dispatcher. */
  io: V86IO;
  /** Devices by name; `pci` is the PCI bus. */
  devices: V86Devices;
  /** Set an ISA IRQ line (PIC, and the IOAPIC when ACPI is on). Level: it stays set. */
  device_raise_irq(irq: number): void;
  /** Clear an ISA IRQ line. */
  device_lower_irq(irq: number): void;
  /** Run one time slice of the guest (wasm export, called by `v86.do_tick`). */
  main_loop(): number;
  /** Allocate (in the wasm heap) a zstd context with a source buffer of `size` bytes. */
  zstd_create_ctx?(size: number): number;
  /** Free a context from `zstd_create_ctx`. */
  zstd_free_ctx?(ctx: number): void;
}

/**
 * A `V86` emulator (the object `new V86(options)` returns) once it is loaded: `emulator.v86`
 * exists from the `emulator-ready` event on.
 */
export interface V86Like {
  /** The machine (`src/main.js`), undefined until the emulator is loaded. */
  v86?: V86Machine | undefined;
}

/**
 * The public `V86` API a migration uses ({@link saveV86}, {@link restoreV86}): the methods of
 * the object `new V86(options)` returns, as v86's own typings declare them.
 */
export interface V86Emulator extends V86Like {
  /** Start (or continue) running the guest. */
  run(): unknown;
  /** Stop after the current time slice; resolves once v86 has stopped. */
  stop(): Promise<void>;
  /** v86's state: CPU, RAM and v86's own devices (not devices attached from outside). */
  save_state(): Promise<ArrayBuffer>;
  /** Take back a state of `save_state` (same memory size and devices). */
  restore_state(state: ArrayBuffer): Promise<void>;
}
