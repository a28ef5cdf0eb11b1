/**
 * Network back-ends for `@virtio-ts/devices`. This entry is browser-safe (no `node:` import, no
 * Node global): a {@link Switch} (L2 learning switch whose ports are `NetBackend`s), a
 * {@link VethPair}, and the length-prefixed framing that QEMU's stream sockets use. The socket
 * tunnels, which speak QEMU's `-netdev stream` / `-netdev socket` (`StreamTunnel`,
 * `StreamTunnelServer`) and `-netdev dgram` (`DgramTunnel`) formats over `node:net` and
 * `node:dgram`, are in the `@virtio-ts/backend-net/node` entry. They move plain Ethernet frames
 * and never see a ring.
 *
 * @packageDocumentation
 */
export {
  DEFAULT_MAX_FRAME_SIZE,
  DEFAULT_QUEUE_BYTES,
  DEFAULT_QUEUE_FRAMES,
  ETH_HEADER_LEN,
  type NetDropReason,
  type NetPortStats,
  type NetQueueOptions,
} from "./endpoint.js";
export {
  encodeLengthPrefixed,
  LengthPrefixedDecoder,
  TunnelError,
  type TunnelErrorCode,
} from "./framing.js";
export {
  type MacTableEntry,
  Switch,
  type SwitchOptions,
  SwitchPort,
  type SwitchPortOptions,
  type SwitchStats,
} from "./switch.js";
export { VethEnd, VethPair, type VethPairOptions } from "./veth.js";
