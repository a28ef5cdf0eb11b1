/**
 * The network behind a virtio-net device: a switch port, a socket tunnel, a tap. Like a tap
 * without a vnet header, a back-end moves plain Ethernet frames (destination MAC first, no
 * `virtio_net_hdr`, no FCS); checksum and segmentation offloads stop at the device.
 *
 * Implementer contract:
 * - **Transmit (guest → network).** The device calls {@link NetBackend.transmit} once per
 *   frame the guest sent. The `frame` view may be a zero-copy view of guest memory (possibly
 *   over a `SharedArrayBuffer`) and is valid only during the call: copy what you keep. Return
 *   `false` to drop the frame (queue full, port down); the device counts the drop and still
 *   completes the guest's buffer. Never throw.
 * - **Receive (network → guest).** After {@link NetBackend.attach}, the back-end delivers frames
 *   with {@link NetFrameSink.deliver}. The sink copies the frame into guest receive buffers
 *   before returning, so the back-end may reuse the bytes afterwards. When `deliver` returns
 *   `false` the guest had no room; the back-end may hold the frame in a *bounded* queue and try
 *   again after {@link NetBackend.rxReady}, or drop and count it. Never an unbounded queue.
 * - Calls are made from one thread; none may re-enter the caller synchronously in a way that
 *   needs more than a bounded amount of work (a switch that forwards a transmitted frame to
 *   another port's sink is fine).
 *
 * @see VIRTIO 1.3 §5.1.6 "Device Operation"
 */
export interface NetBackend {
  /**
   * Send one Ethernet frame the guest transmitted.
   * @param frame - the frame, valid only during the call
   * @returns whether the frame was accepted (false: dropped by the back-end)
   */
  transmit(frame: Uint8Array): boolean;
  /**
   * Start delivering received frames to `sink` (replaces any earlier sink).
   * @param sink - the device's receive path
   */
  attach(sink: NetFrameSink): void;
  /** Stop delivering frames (the device was reset or is going away). */
  detach(): void;
  /**
   * The device has new receive buffers: a back-end holding frames that an earlier
   * {@link NetFrameSink.deliver} refused may deliver them now. Optional.
   */
  rxReady?(): void;
}

/** The receive path of a network device, as a back-end sees it. */
export interface NetFrameSink {
  /**
   * Give the guest one received Ethernet frame. The bytes are copied before this returns.
   * @param frame - the frame
   * @returns false if the guest had no receive buffer for it (nothing was copied)
   */
  deliver(frame: Uint8Array): boolean;
}
