/**
 * virtio-console driver: {@link ConsoleDriver} (port 0 and multiport).
 * @see VIRTIO 1.3 §5.3 "Console Device"
 * @module
 */
export * from "./console-driver.js";
export * from "./slab.js";
