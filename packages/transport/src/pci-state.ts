/**
 * Suspend / encode / resume for a virtio-pci function in one call each: the core's state plus
 * the function's registers (configuration space, MSI-X, selectors), as the bytes of
 * `encodeDeviceState`.
 * @module
 */
import type { DeviceModel } from "./device-model.js";
import { decodeDeviceState, encodeDeviceState } from "./device-state.js";
import { VirtioPciDevice, type VirtioPciDeviceOptions } from "./pci-device.js";

/**
 * Encode a suspended virtio-pci function: `pci.core.saveState(pci.saveTransportState())` as
 * bytes.
 *
 * @example
 * ```ts
 * await source.core.suspend();           // the guest's vCPUs are stopped first
 * const bytes = savePciDevice(source);   // send them, with guest RAM and the disk
 * await source.core.abandon();           // late back-end results are dropped
 * // elsewhere, with the same options (BAR kind, MSI-X vectors, IDs) and a fresh model:
 * const target = restorePciDevice(bytes, new BlkDevice(disk), { memory, host });
 * ```
 * @param pci - the function, suspended (`await pci.core.suspend()`)
 * @returns versioned, checksummed bytes
 * @throws RangeError unless the device is suspended; PackedOvercommitError (see
 *   `VirtioDeviceCore.saveState`)
 */
export function savePciDevice(pci: VirtioPciDevice): Uint8Array {
  return encodeDeviceState(pci.core.saveState(pci.saveTransportState()));
}

/**
 * Build a virtio-pci function from bytes of {@link savePciDevice}: a new `VirtioPciDevice`
 * over `model` — a fresh instance of the source's model class, over the same or a copied
 * back-end — with the source's options, brought to the saved state and serving. The host's
 * `mapBar` hears of every BAR the guest had placed, and `setIntx` of a pending interrupt,
 * before this returns.
 * @param bytes - the encoded state (untrusted)
 * @param model - a fresh, never activated model
 * @param options - the options the source was built with (memory and host are this side's)
 * @returns the resumed function
 * @throws DeviceStateError (format, version, checksum, mismatch) for bytes that do not decode
 *   or do not fit this function; a `VirtioError` from the model's `restoreState`; what the
 *   `VirtioPciDevice` constructor throws for bad options
 */
export function restorePciDevice(
  bytes: Uint8Array,
  model: DeviceModel,
  options: VirtioPciDeviceOptions,
): VirtioPciDevice {
  const state = decodeDeviceState(bytes);
  const pci = new VirtioPciDevice(model, options);
  pci.restoreState(state);
  return pci;
}
