/**
 * virtio-console driver: {@link ConsoleDriver} (port 0 and multiport).
 * @see VIRTIO 1.3 §5.3 "Console Device"
 * @module
 */
export {
  CONSOLE_DRIVER_FEATURES,
  ConsoleDeviceFault,
  type ConsoleDeviceFaultCode,
  ConsoleDriver,
  type ConsoleDriverOptions,
  type ConsoleDriverStats,
  type ConsolePortEvent,
  type ConsolePortInfo,
} from "./console-driver.js";
export { SlabAllocator } from "./slab.js";
