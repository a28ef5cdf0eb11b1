/**
 * Virtqueues: split (and packed) rings, driver and device sides, with validation of everything
 * the other side writes and typed errors for hostile input.
 *
 * @packageDocumentation
 */
export * from "./chain.js";
export * from "./create-queue.js";
export * from "./errors.js";
export * from "./forwarding-queue.js";
export * from "./gated-queue.js";
export * from "./packed-device.js";
export * from "./packed-driver.js";
export * from "./packed-layout.js";
export * from "./ring-features.js";
export * from "./ring-placement.js";
export * from "./split-device.js";
export * from "./split-driver.js";
export * from "./split-layout.js";
export type * from "./types.js";
