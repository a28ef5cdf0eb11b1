/**
 * Device status field bits.
 *
 * The driver writes these to the device status field in order during initialisation
 * (ACKNOWLEDGE → DRIVER → FEATURES_OK → DRIVER_OK); the device sets DEVICE_NEEDS_RESET.
 * Writing 0 resets the device.
 *
 * @see VIRTIO 1.3 §2.1 "Device Status Field"
 */
export const DeviceStatus = {
  /** The guest OS has found the device and recognised it as a valid virtio device. */
  ACKNOWLEDGE: 1,
  /** The guest OS knows how to drive the device. */
  DRIVER: 2,
  /** The driver is set up and ready to drive the device. */
  DRIVER_OK: 4,
  /** The driver has acknowledged all the features it understands; negotiation is complete. */
  FEATURES_OK: 8,
  /** The device has experienced an error from which it cannot recover. */
  DEVICE_NEEDS_RESET: 64,
  /** Something went wrong in the guest and it has given up on the device. */
  FAILED: 128,
} as const;

/** One device status bit (a value of {@link DeviceStatus}). */
export type DeviceStatus = (typeof DeviceStatus)[keyof typeof DeviceStatus];
