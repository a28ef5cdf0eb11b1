/**
 * Transports for virtio devices: the transport-independent device core (status state machine,
 * feature negotiation, configuration space with generation counter, queue setup and reset,
 * interrupt status), the virtio-mmio and virtio-pci register files (device side, the VMM's
 * trap handler) and driver accessors, and doorbells for kicks and interrupts, in-thread or across threads.
 *
 * @packageDocumentation
 */
export {
  CONFIG_CHANGE_SOURCE,
  type DeviceCoreOptions,
  type DeviceCoreStats,
  FEATURE_WORDS,
  LEGACY_TRANSPORT_FEATURES,
  MMIO_TRANSPORT_FEATURES,
  type QueueArea,
  type SuspendOptions,
  VirtioDeviceCore,
} from "./device-core.js";
export type { DeviceContext, DeviceModel, DeviceNotifiers } from "./device-model.js";
export {
  crc32,
  DEVICE_STATE_VERSION,
  type DeviceState,
  DeviceStateChecksumError,
  DeviceStateError,
  type DeviceStateErrorCode,
  DeviceStateFormatError,
  DeviceStateMismatchError,
  DeviceStateVersionError,
  decodeDeviceState,
  encodeDeviceState,
  type QueueSnapshot,
} from "./device-state.js";
export {
  type Doorbell,
  LocalDoorbell,
  type LocalDoorbellOptions,
  SharedDoorbell,
  type SharedDoorbellHandle,
} from "./doorbell.js";
export type {
  ConfigReader,
  ConfigWritableTransport,
  DriverDeviceInfo,
  DriverQueueSetupOptions,
  DriverTransport,
} from "./driver-transport.js";
export { TransportError, type TransportErrorCode } from "./errors.js";
export { ForwardingDeviceContext } from "./forwarding-context.js";
export {
  InThreadMmio,
  type InThreadMmioOptions,
  type InterruptDelivery,
  InterruptLatch,
} from "./in-thread.js";
export {
  MMIO_REGISTER_NAMES,
  MmioDevice,
  type MmioDeviceOptions,
  type MmioRegisterName,
} from "./mmio-device.js";
export {
  DRIVER_TRANSPORT_FEATURES,
  type LegacyQueueLayout,
  type MmioBus,
  type MmioDeviceInfo,
  type MmioDriverOptions,
  MmioDriverTransport,
} from "./mmio-driver.js";
export { restoreMmioDevice, saveMmioDevice } from "./mmio-state.js";
export {
  decodeNotificationData,
  encodeNotificationData,
  type NotificationData,
  packedNotificationData,
  splitAvailIndex,
  splitNotificationData,
} from "./notification-data.js";
export {
  PCI_REGISTER_NAMES,
  PCI_TRANSPORT_FEATURES,
  type PciBarInfo,
  type PciBarKind,
  type PciBarMapping,
  type PciDeviceStats,
  type PciHost,
  type PciRegisterName,
  VirtioPciDevice,
  type VirtioPciDeviceOptions,
} from "./pci-device.js";
export {
  type PciBarSize,
  type PciDeviceInfo,
  type PciDriverOptions,
  PciDriverTransport,
  type PciFunctionAccess,
  type PciNotifyLocation,
  type PciStructureLocation,
} from "./pci-driver.js";
export { restorePciDevice, savePciDevice } from "./pci-state.js";
export { RateLimitedLog, type RateLimitedLogOptions } from "./rate-limit.js";
