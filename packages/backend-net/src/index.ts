/**
 * Network back-ends for `@virtio-ts/devices`: a {@link Switch} (L2 learning switch whose
 * ports are `NetBackend`s), a {@link VethPair}, and socket tunnels that speak QEMU's
 * `-netdev stream` / `-netdev socket` ({@link StreamTunnel}, {@link StreamTunnelServer}) and
 * `-netdev dgram` ({@link DgramTunnel}) formats. They move plain Ethernet frames and never see
 * a ring.
 *
 * @packageDocumentation
 */
export { type DgramAddress, DgramTunnel, type DgramTunnelOptions } from "./dgram-tunnel.js";
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
  type StreamAddress,
  type StreamServerStats,
  StreamTunnel,
  type StreamTunnelOptions,
  StreamTunnelServer,
  type StreamTunnelServerOptions,
  type TcpAddress,
  type TunnelStats,
  type UnixAddress,
} from "./stream-tunnel.js";
export {
  type MacTableEntry,
  Switch,
  type SwitchOptions,
  SwitchPort,
  type SwitchPortOptions,
  type SwitchStats,
} from "./switch.js";
export { VethEnd, VethPair, type VethPairOptions } from "./veth.js";
