/**
 * The control queue of the virtio-net device (VIRTIO 1.3 §5.1.6.5): RX modes and MAC tables
 * (into the receive filter), MAC_ADDR_SET, ANNOUNCE_ACK and VQ_PAIRS_SET, each answered with
 * an ack byte.
 * @module
 */
import {
  ETH_ALEN,
  NetCtrlAck,
  NetCtrlClass,
  NetCtrlCmd,
  NetMqPairs,
  NetStatus,
} from "@virtio-ts/spec";
import type { DeviceContext } from "@virtio-ts/transport";
import { DescriptorChain } from "@virtio-ts/virtqueue";
import { MAX_SEGMENTS } from "./net-rx.js";
import { NetGuestFault, type NetState } from "./net-state.js";

/** The control path (internal to the device). */
export class NetControl {
  readonly #st: NetState;
  readonly #chain = new DescriptorChain(MAX_SEGMENTS);
  readonly #scratch = new Uint8Array(8);

  /** @param state - the device's shared state */
  constructor(state: NetState) {
    this.#st = state;
  }

  /**
   * Serve the control queue: run every command and write its ack (the first device-writable
   * byte). A command with a wrong size, an unknown class or command, or one whose feature was
   * not negotiated is answered VIRTIO_NET_ERR; a chain with no writable byte is returned
   * unanswered and counted.
   */
  serve(ctx: DeviceContext): void {
    const st = this.#st;
    const q = ctx.queue(st.ctrlIndex);
    if (q === undefined) return;
    const chain = this.#chain;
    const ack = this.#scratch.subarray(0, 1);
    let pushed = false;
    while (st.pop(ctx, q, chain)) {
      pushed = true;
      if (chain.writableBytes < 1) {
        st.stats.ctrlErr++;
        ctx.noteFault(new NetGuestFault("net-ctrl-no-ack", chain.head, 0));
        q.push(chain.head, 0);
        continue;
      }
      const ok = this.#command(ctx, chain);
      if (ok) st.stats.ctrlOk++;
      else st.stats.ctrlErr++;
      ack[0] = ok ? NetCtrlAck.OK : NetCtrlAck.ERR;
      // §5.1.6.5: `ack` is the first device-writable byte.
      chain.copyToWritable(ctx.memory, 0, ack);
      q.push(chain.head, 1);
    }
    if (pushed) ctx.signalUsed(st.ctrlIndex);
  }

  /** Run one control command. @returns whether it succeeded (VIRTIO_NET_OK). */
  #command(ctx: DeviceContext, chain: DescriptorChain): boolean {
    const st = this.#st;
    const mem = ctx.memory;
    const total = chain.readableBytes;
    if (total < 2) return false;
    const b = this.#scratch;
    chain.copyFromReadable(mem, 0, b.subarray(0, 2));
    const cls = b[0]!;
    const cmd = b[1]!;
    const dataLen = total - 2;
    switch (cls) {
      case NetCtrlClass.RX: {
        // §5.1.6.5.1: each RX command carries one byte, 0 = off.
        if (!st.ctrlRx || dataLen !== 1) return false;
        if (cmd > NetCtrlCmd.RX_ALLMULTI && !st.ctrlRxExtra) return false;
        chain.copyFromReadable(mem, 2, b.subarray(0, 1));
        return st.filter.setMode(cmd, b[0] !== 0);
      }
      case NetCtrlClass.MAC:
        if (cmd === NetCtrlCmd.MAC_TABLE_SET) return st.ctrlRx && st.filter.setTables(mem, chain);
        if (cmd === NetCtrlCmd.MAC_ADDR_SET) {
          // §5.1.6.5.2: six bytes; the device uses them as its address and in config `mac`.
          if (!st.ctrlMacAddr || dataLen !== ETH_ALEN) return false;
          chain.copyFromReadable(mem, 2, b.subarray(0, ETH_ALEN));
          st.mac.set(b.subarray(0, ETH_ALEN));
          return true;
        }
        return false;
      case NetCtrlClass.ANNOUNCE:
        // §5.1.6.5.4: ANNOUNCE_ACK (no data) clears VIRTIO_NET_S_ANNOUNCE.
        if (!st.announce || cmd !== NetCtrlCmd.ANNOUNCE_ACK || dataLen !== 0) return false;
        st.status &= ~NetStatus.ANNOUNCE;
        return true;
      case NetCtrlClass.MQ: {
        if (!st.mq || cmd !== NetCtrlCmd.MQ_VQ_PAIRS_SET || dataLen !== 2) return false;
        chain.copyFromReadable(mem, 2, b.subarray(0, 2));
        const n = b[0]! | (b[1]! << 8);
        // §5.1.6.5.5: 1 ≤ virtqueue_pairs ≤ max_virtqueue_pairs, else VIRTIO_NET_ERR.
        if (n < NetMqPairs.MIN || n > st.maxQueuePairs) return false;
        st.pairs = n;
        return true;
      }
      default:
        return false;
    }
  }
}
