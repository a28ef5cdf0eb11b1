/**
 * Attach virtio-ts device models to the v86 x86 emulator's PCI bus over virtio-pci
 * ({@link V86VirtioBus}): configuration space, I/O BARs that follow the guest's placement, INTx
 * through v86's PIRQ routing, and guest RAM that follows v86's growing wasm memory; and moving a
 * running machine with those devices to another emulator ({@link saveV86} / {@link restoreV86}).
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
  V86Emulator,
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
export {
  decodeV86Snapshot,
  encodeV86Snapshot,
  type RestoreV86Options,
  restoreV86,
  type SaveV86Options,
  saveV86,
  V86_SNAPSHOT_VERSION,
  type V86DeviceSnapshot,
  type V86Snapshot,
} from "./migrate.js";
