/**
 * {@link VhostUserVsockBackend}: a virtio-vsock model (`VsockDevice`) behind QEMU's
 * `vhost-user-vsock-pci`.
 * @module
 */
import { DeviceId } from "@virtio-ts/spec";
import type { DeviceModel } from "@virtio-ts/transport";
import { VhostUserBackend, type VhostUserBackendOptions } from "./backend.js";

/**
 * {@link VhostUserBackend} for a virtio-vsock model (`VsockDevice` from
 * `@virtio-ts/devices/vsock`): the back-end of QEMU's
 * `-chardev socket,id=c0,path=SOCK -device vhost-user-vsock-pci,chardev=c0`.
 *
 * QEMU reads `guest_cid` from the model's configuration with GET_CONFIG (so
 * PROTOCOL_F_CONFIG must stay offered) and hands the back-end the receive and transmit
 * queues; the event queue stays with QEMU (hw/virtio/vhost-vsock-common.c), so the model's
 * `transportReset` event cannot reach the guest over vhost-user (its connections still fail).
 */
export class VhostUserVsockBackend extends VhostUserBackend {
  /**
   * @param model - a socket device model (`deviceId` 19)
   * @param path - unix socket path
   * @param options - see {@link VhostUserBackendOptions}
   * @throws TypeError if the model is not a socket device; otherwise as {@link VhostUserBackend}
   */
  constructor(model: DeviceModel, path: string, options: VhostUserBackendOptions = {}) {
    if (model?.deviceId !== DeviceId.VSOCK) {
      throw new TypeError(`model must be a socket device (deviceId 19), got ${model?.deviceId}`);
    }
    super(model, path, options);
  }
}
