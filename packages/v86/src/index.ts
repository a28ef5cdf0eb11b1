/**
 * Attach virtio-ts device models to the v86 x86 emulator's PCI bus over virtio-pci
 * ({@link V86VirtioBus}): configuration space, I/O BARs that follow the guest's placement, INTx
 * through v86's PIRQ routing, and guest RAM that follows v86's growing wasm memory.
 *
 * @packageDocumentation
 */

export * from "./bus.js";
export type * from "./internals.js";
