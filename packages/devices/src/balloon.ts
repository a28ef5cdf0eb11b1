/**
 * virtio-balloon: the {@link BalloonDevice} model (inflate, deflate, memory statistics and free
 * page reporting) and the {@link BalloonHost} callbacks a VMM hears the balloon through.
 * @see VIRTIO 1.3 §5.5 "Traditional Memory Balloon Device"
 * @module
 */
export * from "./balloon-device.js";
