import type { NetBackend } from "@virtio-ts/devices";
import { createTsNic, Responder, type ResponderStats, type TsNic } from "@virtio-ts/interop";

/** Counters of a {@link PingPeer}. */
export type PingPeerStats = ResponderStats;

/**
 * The host at the other end of the guest's eth0: a "TypeScript guest" (our NetDriver over our
 * virtio-mmio transport to our NetDevice, from @virtio-ts/interop) on a switch port, answering
 * ARP requests for its address and ICMP echo requests to it (interop's {@link Responder}).
 */
export class PingPeer {
  /** The NIC (driver, device, transport). */
  readonly nic: TsNic;
  /** Counters (mutated in place). */
  readonly stats: PingPeerStats;

  /**
   * @param port - the switch port (or any NetBackend) the peer's NIC uses
   * @param ip - its IPv4 address (default 10.0.2.2)
   * @param mac - its MAC (default 52:54:00:00:00:02)
   */
  constructor(
    port: NetBackend,
    ip: readonly number[] = [10, 0, 2, 2],
    mac = Uint8Array.of(0x52, 0x54, 0, 0, 0, 2),
  ) {
    const responder = new Responder(mac, ip);
    this.stats = responder.stats;
    this.nic = createTsNic(port, {
      mac,
      onFrame: (f, nic) => {
        const reply = responder.handle(f);
        if (reply !== undefined) nic.driver.trySend(reply);
      },
    });
  }

  /** Detach from the network. */
  close(): void {
    this.nic.close();
  }
}
