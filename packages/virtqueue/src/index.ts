/**
 * Virtqueues: split and packed rings, driver and device sides.
 * @packageDocumentation
 */
export * from "./errors.js";
export type * from "./types.js";
export * from "./split-layout.js";
