/**
 * {@link VhostUserNetBackend}: a virtio-net model (`NetDevice`) behind QEMU's
 * `-netdev vhost-user`, the front-end emulating the control queue.
 * @module
 */
import { DeviceId, featureMask, hasFeature, NetFeature } from "@virtio-ts/spec";
import type { DeviceModel } from "@virtio-ts/transport";
import { VhostUserBackend, type VhostUserBackendOptions } from "./backend.js";

/**
 * Features served by the front-end itself, not by this back-end: QEMU's virtio-net emulates
 * the control queue (VQ_PAIRS_SET becomes SET_VRING_ENABLE of the pair's rings) and keeps the
 * receive filter, MAC and announce logic; none of these bits is in the set QEMU 7.2 acks to a
 * vhost-user back-end (hw/net/vhost_net.c `user_feature_bits`).
 */
const FRONT_END_FEATURES = [
  NetFeature.CTRL_VQ,
  NetFeature.CTRL_RX,
  NetFeature.CTRL_RX_EXTRA,
  NetFeature.CTRL_VLAN,
  NetFeature.CTRL_MAC_ADDR,
  NetFeature.GUEST_ANNOUNCE,
].reduce((m, b) => m | featureMask(b), 0n);

/**
 * {@link VhostUserBackend} for a virtio-net model (`NetDevice` on a switch port, say): the
 * back-end of QEMU's `-chardev socket,id=c1,path=SOCK -netdev vhost-user,id=n0,chardev=c1,queues=N
 * -device virtio-net-pci,netdev=n0,mq=on`.
 *
 * The model runs unchanged. The front-end emulates the control queue, so the back-end offers
 * the model's features without the control-queue ones (CTRL_VQ, CTRL_RX, CTRL_RX_EXTRA,
 * CTRL_VLAN, CTRL_MAC_ADDR, GUEST_ANNOUNCE) and, when the front-end acks MQ, tells the model
 * CTRL_VQ was negotiated too (VIRTIO 1.3 §5.1.3.1: MQ requires it) — its control queue, the
 * last ring, is simply never started. Queue pairs are enabled with SET_VRING_ENABLE as the
 * guest changes VQ_PAIRS_SET through the front-end; the model receives on the first pair
 * (it steers over the pairs its own control queue enabled, which stays 1: allowed, §5.1.6.5.5),
 * and transmits from every enabled pair. Mergeable receive buffers, checksum offload and
 * packed rings are served when the model offers them.
 */
export class VhostUserNetBackend extends VhostUserBackend {
  /**
   * @param model - a network device model (`deviceId` 1)
   * @param path - unix socket path
   * @param options - see {@link VhostUserBackendOptions}
   * @throws TypeError if the model is not a network device; otherwise as {@link VhostUserBackend}
   */
  constructor(model: DeviceModel, path: string, options: VhostUserBackendOptions = {}) {
    if (model?.deviceId !== DeviceId.NET) {
      throw new TypeError(`model must be a network device (deviceId 1), got ${model?.deviceId}`);
    }
    super(model, path, options);
  }

  /** The model's features without those the front-end emulates. */
  protected override servedFeatures(features: bigint): bigint {
    return features & ~FRONT_END_FEATURES;
  }

  /** With MQ, the model is told CTRL_VQ was negotiated (the front-end serves that queue). */
  protected override modelFeatures(acked: bigint): bigint {
    return hasFeature(acked, NetFeature.MQ) ? acked | featureMask(NetFeature.CTRL_VQ) : acked;
  }
}
