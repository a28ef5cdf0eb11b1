/**
 * virtio-console: the {@link ConsoleDevice} model, the {@link ConsoleBackend} it delegates I/O
 * to, and {@link StreamConsoleBackend} over a readable / writable stream pair.
 * @see VIRTIO 1.3 §5.3 "Console Device"
 * @module
 */
export * from "./console-device.js";
export * from "./console-stream.js";
