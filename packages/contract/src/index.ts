/**
 * Conformance suites for third-party virtio implementations: a framework-neutral core
 * (`ContractSuite`, `ContractViolation`, `runContract`), the "any virtio-blk device" and "any
 * virtio-blk driver" suites with their adapter interfaces, and a vitest binding in the
 * `@virtio-ts/contract/vitest` subpath.
 *
 * @packageDocumentation
 */
export * from "./blk-device-suite.js";
export * from "./blk-driver-suite.js";
export * from "./contract.js";
export * from "./rng-device-suite.js";
