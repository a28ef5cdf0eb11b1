/**
 * The control queue of the virtio-net driver (VIRTIO 1.3 §5.1.6.5): commands queued in order,
 * one slot each (class, command and data readable, the ack byte writable), settled from the
 * ack the device writes — distrusted.
 * @module
 */
import { NetCtrlAck, NetCtrlClass, NetCtrlCmd, NetFeature } from "@virtio-ts/spec";
import type { CtrlReq, NetDriverCore } from "./net-driver-core.js";
import { NetCtrlError, NetDeviceFault } from "./net-driver-types.js";

/** The control path (internal to the driver). */
export class NetDriverCtrl {
  /** Commands waiting for room, in order. */
  readonly waiting: CtrlReq[] = [];
  /** Commands on the ring. */
  readonly live = new Set<CtrlReq>();
  readonly #c: NetDriverCore;
  /** `complete` bound once, for `reapAll`. */
  readonly onUsed = (req: CtrlReq, len: number): void => this.complete(req, len);

  /** @param core - the driver's shared state */
  constructor(core: NetDriverCore) {
    this.#c = core;
  }

  /**
   * Send command `cls`.`cmd` if the feature it needs was negotiated (§5.1.6.5).
   * @throws NetCtrlError (rejection) "net-ctrl-unsupported", "net-ctrl-err"; the fault once stopped
   */
  send(cls: number, cmd: number, data: Uint8Array): Promise<void> {
    const need =
      cls === NetCtrlClass.RX
        ? cmd <= NetCtrlCmd.RX_ALLMULTI
          ? NetFeature.CTRL_RX
          : NetFeature.CTRL_RX_EXTRA
        : cls === NetCtrlClass.MAC
          ? cmd === NetCtrlCmd.MAC_TABLE_SET
            ? NetFeature.CTRL_RX
            : NetFeature.CTRL_MAC_ADDR
          : cls === NetCtrlClass.ANNOUNCE
            ? NetFeature.GUEST_ANNOUNCE
            : NetFeature.MQ;
    if (!this.#c.has(need)) {
      return Promise.reject(new NetCtrlError("net-ctrl-unsupported", cls, cmd));
    }
    return this.submit(cls, cmd, data);
  }

  /** Send a command without the feature check (the raw `command`). */
  submit(cls: number, cmd: number, data: Uint8Array): Promise<void> {
    const c = this.#c;
    if (c.ctrlQ === undefined) {
      return Promise.reject(new NetCtrlError("net-ctrl-unsupported", cls, cmd));
    }
    if (c.broken !== undefined) return Promise.reject(c.broken);
    return new Promise<void>((resolve, reject) => {
      const req: CtrlReq = { cls, cmd, data, resolve, reject, slot: -1 };
      if (this.waiting.length > 0 || !this.#start(req)) this.waiting.push(req);
      else c.kick();
    });
  }

  /** Layout in one slot: class, command, data (readable); ack in the last byte (writable). */
  #start(req: CtrlReq): boolean {
    const c = this.#c;
    const q = c.ctrlQ!;
    if (c.slab.available < 1 || q.numFree < 2) return false;
    const slot = c.slab.alloc() as number;
    const mem = c.mem;
    mem.writeU8(slot, req.cls);
    mem.writeU8(slot + 1, req.cmd);
    if (req.data.length > 0) mem.write(slot + 2, req.data);
    const ack = slot + c.slab.slotSize - 1;
    // A value the device must overwrite: a completion that leaves it is caught.
    mem.writeU8(ack, 0xff);
    req.slot = slot;
    if (!q.add([{ addr: slot, len: 2 + req.data.length }], [{ addr: ack, len: 1 }], req)) {
      c.slab.free(slot);
      return false;
    }
    this.live.add(req);
    return true;
  }

  /** Start waiting commands that fit now, in order. */
  drain(): void {
    const w = this.waiting;
    let i = 0;
    while (i < w.length && this.#start(w[i]!)) i++;
    if (i > 0) w.splice(0, i);
  }

  /** A used control buffer: settle its command from the ack byte (distrusted). */
  complete(req: CtrlReq, len: number): void {
    const c = this.#c;
    this.live.delete(req);
    const ack = c.mem.readU8(req.slot + c.slab.slotSize - 1);
    c.slab.free(req.slot);
    if (len < 1) {
      req.reject(new NetDeviceFault("net-bad-used-len", "control ack not written", len));
    } else if (ack === NetCtrlAck.OK) {
      req.resolve();
    } else if (ack === NetCtrlAck.ERR) {
      req.reject(new NetCtrlError("net-ctrl-err", req.cls, req.cmd));
    } else {
      req.reject(new NetDeviceFault("net-bad-ack", `ack byte is ${ack}`, ack));
    }
  }
}
