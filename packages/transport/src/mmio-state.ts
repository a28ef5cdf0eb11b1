/**
 * Suspend / encode / resume for a virtio-mmio device in one call each: the core's state plus
 * the MMIO selector registers, as the bytes of `encodeDeviceState`.
 * @module
 */
import { MmioVersion } from "@virtio-ts/spec";
import type { DeviceModel } from "./device-model.js";
import { DeviceStateMismatchError, decodeDeviceState, encodeDeviceState } from "./device-state.js";
import { MmioDevice, type MmioDeviceOptions } from "./mmio-device.js";

/**
 * Encode a suspended MMIO device: `mmio.core.saveState(mmio.saveTransportState())` as bytes.
 *
 * @example
 * ```ts
 * await source.core.suspend();            // the guest's vCPUs are stopped too
 * const bytes = saveMmioDevice(source);   // send them, with the guest memory and the disk
 * await source.core.abandon();        // late back-end results are dropped
 * // elsewhere, over a copy of the memory and the same (or a copied) back-end:
 * const target = restoreMmioDevice(bytes, new BlkDevice(disk), { memory, interrupt });
 * ```
 * @param mmio - the device, suspended (`await mmio.core.suspend()`)
 * @returns versioned, checksummed bytes
 * @throws RangeError unless the device is suspended; PackedOvercommitError (see
 *   `VirtioDeviceCore.saveState`)
 */
export function saveMmioDevice(mmio: MmioDevice): Uint8Array {
  return encodeDeviceState(mmio.core.saveState(mmio.saveTransportState()));
}

/**
 * Build an MMIO device from bytes of {@link saveMmioDevice}: a new `MmioDevice` (of the saved
 * version) over `model` — a fresh instance of the source's model class, over the same or a
 * copied back-end — brought to the saved state and serving.
 * @param bytes - the encoded state (untrusted)
 * @param model - a fresh, never activated model
 * @param options - memory, interrupt line, log; `version` is taken from the state
 * @throws DeviceStateError (format, version, checksum, mismatch) for bytes that do not decode
 *   or do not fit `model`; a `VirtioError` from the model's `restoreState`
 */
export function restoreMmioDevice(
  bytes: Uint8Array,
  model: DeviceModel,
  options: Omit<MmioDeviceOptions, "version">,
): MmioDevice {
  const state = decodeDeviceState(bytes);
  const mmio = new MmioDevice(model, {
    ...options,
    version: state.legacy ? MmioVersion.LEGACY : MmioVersion.MODERN,
  });
  if (state.transport.length !== 0 && state.transport.length !== 16) {
    throw new DeviceStateMismatchError(
      "transport",
      `${state.transport.length} bytes are not the registers of a virtio-mmio device`,
    );
  }
  mmio.restoreTransportState(state.transport);
  mmio.core.restoreState(state);
  return mmio;
}
