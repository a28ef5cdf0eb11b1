/**
 * virtio-net: the {@link NetDevice} model and the {@link NetBackend} it moves frames through.
 * @see VIRTIO 1.3 §5.1 "Network Device"
 * @module
 */
export type { NetBackend, NetFrameSink } from "./net-backend.js";
export { NetDevice, type NetDeviceOptions } from "./net-device.js";
export type { NetRxFilter } from "./net-filter.js";
export { type NetDeviceStats, NetGuestFault, type NetGuestFaultCode } from "./net-state.js";
