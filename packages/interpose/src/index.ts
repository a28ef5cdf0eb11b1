/**
 * Interposition middleware: wrappers that implement a back-end interface (`BlockBackend`,
 * `NetBackend`) over another back-end, adding what the physical resource does not have —
 * encryption, write logging and snapshots, rate limits, replication, slicing, packet capture —
 * without the guest's driver or the device model knowing.
 *
 * @packageDocumentation
 */
export * from "./encrypt.js";
export * from "./net-tunnel.js";
export * from "./pcap.js";
export * from "./snapshot-log.js";
export * from "./sniff.js";
export * from "./xts.js";
