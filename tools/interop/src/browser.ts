/**
 * The browser-safe part of `@virtio-ts/interop` (the root also starts QEMU and reads files):
 * what `tools/linux`'s browser page bundles in its place.
 *
 * @module
 */
export * from "./responder.js";
export * from "./ts-nic.js";
