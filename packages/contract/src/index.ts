/**
 * Conformance suites for third-party virtio implementations: a framework-neutral core
 * (`ContractSuite`, `ContractViolation`, `runContract`), the "any virtio-blk device", "any
 * virtio-blk driver", "any virtio-net device", "any virtio-console device", "any virtio-console
 * driver", "any virtio-rng device", "any virtio-rng driver", "any virtio-balloon device" and "any
 * virtio-balloon driver" suites with their adapter
 * interfaces, each runnable over virtio-mmio or virtio-pci, and a vitest binding in the
 * `@virtio-ts/contract/vitest` subpath.
 *
 * @packageDocumentation
 */
export * from "./balloon-device-suite.js";
export * from "./balloon-driver-suite.js";
export * from "./blk-device-suite.js";
export * from "./blk-driver-suite.js";
export * from "./console-device-suite.js";
export * from "./console-driver-suite.js";
export * from "./contract.js";
export * from "./driver-env.js";
export * from "./net-device-suite.js";
export * from "./rng-device-suite.js";
export * from "./rng-driver-suite.js";
