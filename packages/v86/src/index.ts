/**
 * Attach virtio-ts device models to the v86 x86 emulator's PCI bus over virtio-pci
 * ({@link V86VirtioBus}): configuration space, I/O BARs that follow the guest's placement, INTx
 * through v86's PIRQ routing, and guest RAM that follows v86's growing wasm memory.
 *
 * @packageDocumentation
 */

export {
  type V86AttachOptions,
  type V86BusOptions,
  type V86BusStats,
  V86VirtioBus,
  V86VirtioDevice,
} from "./bus.js";
export type {
  V86Cpu,
  V86Devices,
  V86IO,
  V86Like,
  V86Machine,
  V86Pci,
  V86PciBar,
  V86PciDeviceRecord,
  V86PortEntry,
  V86Ram,
  V86WasmMemory,
} from "./internals.js";
