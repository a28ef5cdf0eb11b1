/**
 * The Node-only network back-ends of `@virtio-ts/backend-net` (import them from
 * `@virtio-ts/backend-net/node`): socket tunnels that speak QEMU's `-netdev stream` /
 * `-netdev socket` ({@link StreamTunnel}, {@link StreamTunnelServer}, over `node:net`) and
 * `-netdev dgram` ({@link DgramTunnel}, over `node:dgram`) formats. The switch, veth pairs and
 * framing, which run anywhere, are in the package's root entry.
 *
 * @module
 */
export { type DgramAddress, DgramTunnel, type DgramTunnelOptions } from "./dgram-tunnel.js";
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
