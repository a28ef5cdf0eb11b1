/**
 * Interposition middleware: wrappers that implement a back-end interface (`BlockBackend`,
 * `NetBackend`) over another back-end, adding what the physical resource does not have, without
 * the guest's driver or the device model knowing. This entry is browser-safe (no `node:` import,
 * no Node global): composition, rate limits, replication ({@link mirror}), slicing and the
 * {@link sniff} tap. The parts built on Node's crypto and file system — disk encryption
 * (`encrypt`, AES-XTS), the snapshot / write log, the pcapng writer and reader and encrypted
 * tunnels — are in the `@virtio-ts/interpose/node` entry.
 *
 * @packageDocumentation
 */
export {
  type AsyncBlockWrapper,
  type BlockWrapper,
  compose,
  composeAsync,
  layer,
} from "./compose.js";
export {
  type MirrorAck,
  MirrorBackend,
  type MirrorMemberState,
  type MirrorOptions,
  type MirrorResyncResult,
  type MirrorStats,
  mirror,
} from "./mirror.js";
export type { CaptureDirection } from "./pcap.js";
export {
  RateLimitedBackend,
  RateLimitGroup,
  type RateLimitGroupOptions,
  type RateLimitOptions,
  type RateLimitStats,
  rateLimit,
} from "./rate-limit.js";
export {
  type NetRateLimitOptions,
  type NetRateLimitStats,
  RateLimitedNetBackend,
  rateLimitNet,
} from "./rate-limit-net.js";
export { SliceBackend, type SliceOptions, slice } from "./slice.js";
export { type FrameRecorder, type SniffOptions, sniff } from "./sniff.js";
export { type RateClock, systemClock, TokenBucket } from "./token-bucket.js";
