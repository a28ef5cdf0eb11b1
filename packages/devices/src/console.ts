/**
 * virtio-console: the {@link ConsoleDevice} model, the {@link ConsoleBackend} it delegates I/O
 * to, and {@link StreamConsoleBackend} over a readable / writable stream pair.
 * @see VIRTIO 1.3 §5.3 "Console Device"
 * @module
 */
export type { ConsoleBackend, ConsoleInputSink } from "./console-backend.js";
export {
  ConsoleDevice,
  type ConsoleDeviceOptions,
  type ConsoleDeviceStats,
  ConsoleFault,
  type ConsoleFaultCode,
  type ConsolePortOptions,
  type ConsolePortState,
} from "./console-device.js";
export {
  type ConsoleReadableStream,
  type ConsoleWritableStream,
  StreamConsoleBackend,
  type StreamConsoleBackendOptions,
} from "./console-stream.js";
