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
export {
  type BalloonDeviceAdapter,
  type BalloonDeviceHandle,
  type BalloonDeviceSetup,
  balloonDeviceSuite,
  RecordingBalloonHost,
} from "./balloon-device-suite.js";
export {
  type BalloonDriverAdapter,
  type BalloonDriverEnv,
  balloonDriverSuite,
} from "./balloon-driver-suite.js";
export { type BlkDeviceAdapter, type BlkDeviceSetup, blkDeviceSuite } from "./blk-device-suite.js";
export { type BlkDriverAdapter, type BlkDriverEnv, blkDriverSuite } from "./blk-driver-suite.js";
export {
  type ConsoleDeviceAdapter,
  type ConsoleDeviceSetup,
  consoleDeviceSuite,
  type PortOpenReport,
  RecordingConsoleBackend,
} from "./console-device-suite.js";
export {
  type ConsoleDriverAdapter,
  type ConsoleDriverEnv,
  consoleDriverSuite,
} from "./console-driver-suite.js";
export {
  type ContractCheck,
  type ContractContext,
  type ContractReport,
  type ContractResult,
  type ContractSuite,
  type ContractTransport,
  ContractViolation,
  expectEqual,
  expectThat,
  type RunContractOptions,
  runCheck,
  runContract,
} from "./contract.js";
export type { DriverEnv, GuestRange } from "./driver-env.js";
export { type NetDeviceAdapter, netDeviceSuite, RecordingNetBackend } from "./net-device-suite.js";
export { type RngDeviceAdapter, rngDeviceSuite } from "./rng-device-suite.js";
export { type RngDriverAdapter, type RngDriverEnv, rngDriverSuite } from "./rng-driver-suite.js";
