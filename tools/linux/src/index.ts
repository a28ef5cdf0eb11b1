/**
 * `pnpm linux`: a Debian i686 Linux guest in the v86 emulator, in Node, whose own virtio
 * drivers drive virtio-ts devices over virtio-pci.
 *
 * @packageDocumentation
 */
export * from "./assets.js";
export * from "./browser-server.js";
export * from "./guest.js";
export * from "./initramfs.js";
export * from "./lab-rig.js";
export * from "./migrate.js";
export * from "./peer.js";
