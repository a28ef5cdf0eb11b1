/**
 * Interposition middleware: wrappers that implement a back-end interface (`BlockBackend`,
 * `NetBackend`) over another back-end, adding what the physical resource does not have —
 * encryption, write logging and snapshots, rate limits, replication, slicing, packet capture —
 * without the guest's driver or the device model knowing.
 *
 * @packageDocumentation
 */
export * from "./compose.js";
export * from "./encrypt.js";
export * from "./mirror.js";
export * from "./net-tunnel.js";
export * from "./pcap.js";
export * from "./rate-limit.js";
export * from "./rate-limit-net.js";
export * from "./slice.js";
export * from "./snapshot-log.js";
export * from "./sniff.js";
export * from "./token-bucket.js";
export * from "./xts.js";
