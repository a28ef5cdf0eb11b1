/**
 * vhost-net: a `NetDevice` whose data plane (transmit / receive rings, header parsing, receive
 * filtering, checksum completion, and the control queue) runs in a worker, while the network
 * back-end (e.g. a backend-net `SwitchPort`) stays on the VMM thread. Frames cross between the
 * two in {@link FrameChannel}s: bounded SharedArrayBuffer rings of fixed-size slots with Atomics
 * head/tail words and doorbells, one per direction, no postMessage per frame.
 *
 * @module
 */
import {
  type NetBackend,
  NetDevice,
  type NetDeviceOptions,
  type NetFrameSink,
} from "@virtio-ts/devices";
import { hasFeature, NetConfig, NetFeature, NetStatus } from "@virtio-ts/spec";
import {
  type DeviceContext,
  type DeviceModel,
  ForwardingDeviceContext,
} from "@virtio-ts/transport";
import { type DeviceQueue, ForwardingDeviceQueue } from "@virtio-ts/virtqueue";
import { FrameChannel, type FrameChannelHandle, type FrameChannelStats } from "./net-channel.js";
import { VhostDevice, type VhostDeviceOptions } from "./vhost-device.js";

/**
 * Index of each Int32 word of the net state block shared by the VMM thread and the worker, and
 * who writes it. The worker's model owns the configuration fields the control queue changes;
 * the VMM thread owns the link and the announce requests.
 *
 * - `LINK`: 1 link up, 0 down (VMM thread; the worker applies it to its model on its next
 *   wake-up and sends the configuration change notification).
 * - `ANNOUNCE_REQ`: bumped by the VMM thread to ask for an announcement (§5.1.6.5.4).
 * - `STATUS`: config `status` as the guest must see it (the worker, after each control command
 *   and each link / announce change; the VMM thread at reset and while no worker runs).
 * - `MAC_HI`, `MAC_LO`: config `mac` (bytes 0–1, bytes 2–5, big-endian), same writers.
 */
export const NetStateWord = {
  /** Link state requested by the VMM thread. */
  LINK: 0,
  /** Announce requests (a counter). */
  ANNOUNCE_REQ: 1,
  /** Config `status`. */
  STATUS: 2,
  /** Config `mac` bytes 0–1. */
  MAC_HI: 3,
  /** Config `mac` bytes 2–5. */
  MAC_LO: 4,
  /** Number of words. */
  COUNT: 8,
} as const;

/** Arguments of {@link createNetModel} (structured-cloneable; built by {@link VhostNetDevice}). */
export interface VhostNetArgs {
  /** NetDevice options; identical on both sides. */
  readonly device?: NetDeviceOptions;
  /** Guest → network frames (the worker pushes, the VMM thread consumes). */
  readonly tx: FrameChannelHandle;
  /** Network → guest frames (the VMM thread pushes, the worker consumes). */
  readonly rx: FrameChannelHandle;
  /** The net state block ({@link NetStateWord}). */
  readonly state: SharedArrayBuffer;
}

/**
 * The worker-side `NetBackend` of vhost-net: `transmit` pushes into the tx channel (false when
 * full: the device drops and counts the frame, as the `NetBackend` contract allows);
 * received frames are taken from the rx channel and given to the device's sink. A frame the
 * sink refuses (no receive buffer) stays in the channel — the channel is the bounded hold
 * queue — until {@link ChannelNetBackend.rxReady}; meanwhile the VMM-side producer sees the
 * channel fill up and holds or drops frames itself.
 */
export class ChannelNetBackend implements NetBackend {
  /** Guest → network. */
  readonly tx: FrameChannel;
  /** Network → guest. */
  readonly rx: FrameChannel;
  /** Called at each wake-up of the receive loop, before it drains (link / announce requests). */
  onWake: (() => void) | undefined = undefined;
  /** Exceptions the sink threw from `deliver` (a contract violation; the frame is dropped). */
  sinkErrors = 0;
  #sink: NetFrameSink | undefined = undefined;
  #running = false;

  /**
   * @param tx - the guest → network channel (this side produces)
   * @param rx - the network → guest channel (this side consumes)
   */
  constructor(tx: FrameChannel, rx: FrameChannel) {
    this.tx = tx;
    this.rx = rx;
  }

  /** @inheritdoc */
  transmit(frame: Uint8Array): boolean {
    return this.tx.push(frame);
  }

  /** Deliver waiting frames to `sink` from now on (and start the receive loop). */
  attach(sink: NetFrameSink): void {
    this.#sink = sink;
    if (!this.#running) {
      this.#running = true;
      void this.#loop();
    }
    this.drain();
  }

  /** Stop delivering; frames waiting in the rx channel are stale for a reset device: discarded. */
  detach(): void {
    this.#sink = undefined;
    this.rx.clear();
  }

  /** The device has receive buffers again: deliver waiting frames until it refuses one. */
  rxReady(): void {
    this.drain();
  }

  /** Deliver waiting frames until the channel is empty or the sink refuses one. */
  drain(): void {
    const sink = this.#sink;
    if (sink === undefined) return;
    const rx = this.rx;
    for (let f = rx.peek(); f !== undefined && this.#sink === sink; f = rx.peek()) {
      let ok: boolean;
      try {
        ok = sink.deliver(f);
      } catch {
        this.sinkErrors++;
        ok = true;
      }
      if (!ok) return;
      rx.shift();
    }
  }

  async #loop(): Promise<void> {
    const bell = this.rx.dataBell;
    for (;;) {
      // Take the doorbell before draining: a frame published after this rings it again.
      bell.take();
      this.onWake?.();
      this.drain();
      if (bell.pending() === 0) await bell.wait();
    }
  }
}

/** The control queue as the worker's NetDevice sees it: `mac` / `status` are published before each ack. */
class PublishingQueue extends ForwardingDeviceQueue {
  readonly #publish: () => void;
  constructor(inner: DeviceQueue, publish: () => void) {
    super(inner);
    this.#publish = publish;
  }
  override push(head: number, written: number): void {
    // The command took effect; publish before the guest can see its ack (the used entry).
    this.#publish();
    super.push(head, written);
  }
  override pushBatch(count: number, written: number): void {
    this.#publish();
    super.pushBatch(count, written);
  }
}

/** The worker's DeviceContext, with the control queue wrapped in a {@link PublishingQueue}. */
class NetWorkerContext extends ForwardingDeviceContext {
  readonly #ctrlIndex: number;
  readonly #publish: () => void;
  constructor(ctx: DeviceContext, ctrlIndex: number, publish: () => void) {
    super(ctx);
    this.#ctrlIndex = ctrlIndex;
    this.#publish = publish;
  }
  protected override wrapQueue(index: number, queue: DeviceQueue): DeviceQueue {
    return index === this.#ctrlIndex ? new PublishingQueue(queue, this.#publish) : queue;
  }
}

/**
 * The data-plane model a vhost-net worker hosts: a `NetDevice` over a
 * {@link ChannelNetBackend}, which publishes the configuration fields its control queue changes
 * (`mac`, `status`) to the net state block and applies the VMM thread's link and announce
 * requests.
 */
export class VhostNetModel implements DeviceModel {
  /** @inheritdoc */
  readonly deviceId: number;
  /** @inheritdoc */
  readonly features: bigint;
  /** @inheritdoc */
  readonly queueMaxSizes: readonly number[];
  /** @inheritdoc */
  readonly configSize: number;
  /** The device model. */
  readonly net: NetDevice;
  /** Its back-end. */
  readonly port: ChannelNetBackend;
  readonly #state: Int32Array;
  #ctx: DeviceContext | undefined = undefined;
  #ctrlIndex = 2;
  #announce = false;
  #announceSeen = 0;
  readonly #publishBound = (): void => this.#publish();

  /**
   * @param args - channels, state block, device options
   * @throws TypeError / RangeError naming a malformed argument
   */
  constructor(args: VhostNetArgs) {
    if (
      !(args?.state instanceof SharedArrayBuffer) ||
      args.state.byteLength < NetStateWord.COUNT * 4
    ) {
      throw new TypeError("args.state must be a SharedArrayBuffer of the net state block size");
    }
    this.#state = new Int32Array(args.state, 0, NetStateWord.COUNT);
    this.port = new ChannelNetBackend(FrameChannel.from(args.tx), FrameChannel.from(args.rx));
    this.net = new NetDevice(this.port, args.device ?? {});
    this.deviceId = this.net.deviceId;
    this.features = this.net.features;
    this.queueMaxSizes = this.net.queueMaxSizes;
    this.configSize = this.net.configSize;
    this.port.onWake = () => this.#onWake();
  }

  /** @inheritdoc */
  readConfig(offset: number, size: 1 | 2 | 4): number {
    return this.net.readConfig(offset, size);
  }

  /** @inheritdoc */
  writeConfig(offset: number, size: 1 | 2 | 4, value: number): void {
    this.net.writeConfig(offset, size, value);
  }

  /** @inheritdoc */
  validateFeatures(features: bigint): boolean {
    return this.net.validateFeatures(features);
  }

  /** @inheritdoc */
  activate(ctx: DeviceContext): void {
    const f = ctx.features;
    this.#ctrlIndex = hasFeature(f, NetFeature.MQ) ? 2 * this.net.maxQueuePairs : 2;
    this.#announce = hasFeature(f, NetFeature.GUEST_ANNOUNCE);
    this.#announceSeen = Atomics.load(this.#state, NetStateWord.ANNOUNCE_REQ);
    // Not active yet: no configuration change notification for the initial link state.
    this.net.setLinkUp(Atomics.load(this.#state, NetStateWord.LINK) !== 0);
    this.#ctx = ctx;
    // MAC_ADDR_SET and ANNOUNCE_ACK change the configuration space: the control queue
    // publishes it before each ack.
    this.net.activate(new NetWorkerContext(ctx, this.#ctrlIndex, this.#publishBound));
    this.#publish();
  }

  /** @inheritdoc */
  onQueueNotify(index: number): void {
    this.net.onQueueNotify(index);
  }

  /** @inheritdoc */
  onQueueEnable(index: number): void {
    this.net.onQueueEnable(index);
  }

  /** @inheritdoc */
  onQueueReset(index: number): void {
    this.net.onQueueReset(index);
  }

  /** @inheritdoc */
  reset(): void {
    this.#ctx = undefined;
    this.net.reset();
  }

  #publish(): void {
    const s = this.#state;
    const mac = this.net.mac;
    Atomics.store(s, NetStateWord.MAC_HI, (mac[0]! << 8) | mac[1]!);
    Atomics.store(
      s,
      NetStateWord.MAC_LO,
      (mac[2]! << 24) | (mac[3]! << 16) | (mac[4]! << 8) | mac[5]!,
    );
    Atomics.store(s, NetStateWord.STATUS, this.net.status);
  }

  /** Apply the VMM thread's link and announce requests (inside the worker's guard). */
  #onWake(): void {
    const ctx = this.#ctx;
    if (ctx === undefined) return;
    ctx.guard(() => {
      const s = this.#state;
      const net = this.net;
      const up = Atomics.load(s, NetStateWord.LINK) !== 0;
      const st = net.status;
      if (up !== ((st & NetStatus.LINK_UP) !== 0)) {
        // Publish first: the notification reaches the VMM thread as a message, after this.
        Atomics.store(
          s,
          NetStateWord.STATUS,
          up ? st | NetStatus.LINK_UP : st & ~NetStatus.LINK_UP,
        );
        net.setLinkUp(up);
        this.#publish();
      }
      const req = Atomics.load(s, NetStateWord.ANNOUNCE_REQ);
      if (req !== this.#announceSeen) {
        this.#announceSeen = req;
        if (this.#announce) {
          Atomics.store(s, NetStateWord.STATUS, net.status | NetStatus.ANNOUNCE);
          net.announce();
          this.#publish();
        }
      }
    });
  }
}

/**
 * Worker-side factory of vhost-net: a {@link VhostNetModel}. Named in a `VhostWorkerSpec` as
 * `{ module: <this module>, export: "createNetModel", args }`.
 * @throws TypeError / RangeError naming a malformed argument
 */
export function createNetModel(args: VhostNetArgs): VhostNetModel {
  return new VhostNetModel(args);
}

/** Options of a {@link VhostNetDevice}. */
export interface VhostNetOptions extends Omit<VhostDeviceOptions, "description" | "worker"> {
  /** NetDevice options (MAC, MTU, queue sizes…), identical on both sides. */
  readonly device?: NetDeviceOptions;
  /** Frame slots of each channel (1 to 65536). Default 256. */
  readonly channelSlots?: number;
  /**
   * The worker module that exports `createNetModel`. Default: `net.js` next to this module
   * (tests running from TypeScript sources point it at `dist/net.js`).
   */
  readonly module?: string | URL;
}

/** Counters of the VMM-side pump of a {@link VhostNetDevice} (mutated in place). */
export interface VhostNetPumpStats {
  /** Wake-ups of the transmit pump (VMM-thread handler calls for guest → network frames). */
  txWakeups: number;
  /** Frames the pump passed to the back-end. */
  txFrames: number;
  /** Of those, frames the back-end refused (or threw on). */
  txBackendDrops: number;
  /** Frames the back-end delivered into the rx channel. */
  rxFrames: number;
  /** `deliver` calls refused because the rx channel was full (the back-end holds or drops). */
  rxRefused: number;
  /** Wake-ups of the space pump (`rxReady` calls passed on to the back-end). */
  spaceWakeups: number;
}

/** Counters of a {@link VhostNetDevice}. */
export interface VhostNetStats {
  /** The VMM-side pump. */
  readonly pump: Readonly<VhostNetPumpStats>;
  /** The guest → network channel. */
  readonly tx: FrameChannelStats;
  /** The network → guest channel. */
  readonly rx: FrameChannelStats;
}

class NullBackend implements NetBackend {
  transmit(): boolean {
    return false;
  }
  attach(): void {}
  detach(): void {}
}

/** The VMM-side description: a NetDevice's identity, with `mac` / `status` from the state block. */
class NetDescription implements DeviceModel {
  readonly deviceId: number;
  readonly features: bigint;
  readonly queueMaxSizes: readonly number[];
  readonly configSize: number;
  readonly net: NetDevice;
  readonly #state: Int32Array;

  constructor(net: NetDevice, state: Int32Array) {
    this.net = net;
    this.#state = state;
    this.deviceId = net.deviceId;
    this.features = net.features;
    this.queueMaxSizes = net.queueMaxSizes;
    this.configSize = net.configSize;
  }

  readConfig(offset: number, size: 1 | 2 | 4): number {
    let v = 0;
    for (let i = size - 1; i >= 0; i--) v = v * 256 + this.#byte(offset + i);
    return v;
  }

  #byte(at: number): number {
    const s = this.#state;
    if (at >= 0 && at < 2) return (Atomics.load(s, NetStateWord.MAC_HI) >>> (8 * (1 - at))) & 0xff;
    if (at >= 2 && at < 6) return (Atomics.load(s, NetStateWord.MAC_LO) >>> (8 * (5 - at))) & 0xff;
    // struct virtio_net_config: status is the le16 at offset 6 (§5.1.4).
    if (at === NetConfig.STATUS) return Atomics.load(s, NetStateWord.STATUS) & 0xff;
    if (at === NetConfig.STATUS + 1) return (Atomics.load(s, NetStateWord.STATUS) >>> 8) & 0xff;
    return this.net.readConfig(at, 1);
  }

  writeConfig(): void {}

  validateFeatures(features: bigint): boolean {
    return this.net.validateFeatures(features);
  }

  activate(): void {}
  onQueueNotify(): void {}
  reset(): void {}
}

/**
 * A vhost-net device on the VMM thread: a `VhostDevice` whose worker hosts a `NetDevice`
 * ({@link VhostNetModel}), plus the pump that moves frames between the two
 * {@link FrameChannel}s and the real network back-end, which stays on this thread.
 *
 * - **Transmit**: the worker's device pushes each frame the guest sent into the tx channel (a
 *   full channel drops it; counted in the channel's `drops` and the device's `txBackendDrops`);
 *   the tx pump wakes on the channel's doorbell (rung only on an empty → non-empty transition)
 *   and calls `backend.transmit` for every waiting frame.
 * - **Receive**: the back-end delivers into the rx channel; a full channel refuses the frame
 *   (`deliver` returns false), so a `SwitchPort` holds it in its bounded queue and retries on
 *   `rxReady`, which the space pump calls when the worker has freed half of the channel. The
 *   worker's device takes frames from the channel only while the guest has receive buffers:
 *   `rxReady` back-pressure reaches the back-end through the channel.
 * - **Control**: status, features and configuration stay here. The control queue runs in the
 *   worker with the rest of the device, because its commands change the receive filter the
 *   data plane applies on every frame; the worker publishes `mac` and `status` to a shared
 *   state block this thread reads the configuration space from. {@link VhostNetDevice.setLinkUp}
 *   and {@link VhostNetDevice.announce} write requests there; the worker applies them and
 *   raises the configuration change notification.
 */
export class VhostNetDevice extends VhostDevice {
  /** The network back-end (on this thread). */
  readonly backend: NetBackend;
  /** Guest → network frames (this side consumes). */
  readonly tx: FrameChannel;
  /** Network → guest frames (this side produces). */
  readonly rx: FrameChannel;
  /** Pump counters. */
  readonly pump: VhostNetPumpStats = {
    txWakeups: 0,
    txFrames: 0,
    txBackendDrops: 0,
    rxFrames: 0,
    rxRefused: 0,
    spaceWakeups: 0,
  };
  readonly #state: Int32Array;
  readonly #defaultMac: Uint8Array;
  readonly #sink: NetFrameSink;
  #netCtx: DeviceContext | undefined = undefined;
  #announce = false;
  #attached = false;
  #pumping = false;
  #closed = false;

  /**
   * @param backend - the network (e.g. a `SwitchPort`), used on this thread only
   * @param options - device options, channel size, worker and timeouts
   * @throws TypeError naming `backend`; RangeError naming a bad option
   */
  constructor(backend: NetBackend, options: VhostNetOptions = {}) {
    const { device = {}, channelSlots = 256, module, ...rest } = options;
    const net = new NetDevice(new NullBackend(), device);
    if (
      typeof backend?.transmit !== "function" ||
      typeof backend.attach !== "function" ||
      typeof backend.detach !== "function"
    ) {
      throw new TypeError("backend must implement NetBackend (transmit, attach, detach)");
    }
    if (!Number.isInteger(channelSlots) || channelSlots < 1 || channelSlots > 65536) {
      throw new RangeError(
        `options.channelSlots must be an integer in [1, 65536], got ${channelSlots}`,
      );
    }
    const slotBytes = net.mtu + 14;
    const tx = FrameChannel.create(channelSlots, slotBytes);
    const rx = FrameChannel.create(channelSlots, slotBytes);
    const stateBuffer = new SharedArrayBuffer(NetStateWord.COUNT * 4);
    const state = new Int32Array(stateBuffer);
    const args: VhostNetArgs = { device, tx: tx.handle, rx: rx.handle, state: stateBuffer };
    super({
      ...rest,
      description: new NetDescription(net, state),
      worker: {
        module: module ?? new URL("./net.js", import.meta.url),
        export: "createNetModel",
        args,
      },
    });
    this.backend = backend;
    this.tx = tx;
    this.rx = rx;
    this.#state = state;
    this.#defaultMac = net.mac;
    Atomics.store(state, NetStateWord.LINK, (net.status & NetStatus.LINK_UP) !== 0 ? 1 : 0);
    this.#resetConfig();
    const pump = this.pump;
    this.#sink = {
      deliver: (frame: Uint8Array): boolean => {
        if (rx.push(frame)) {
          pump.rxFrames++;
          return true;
        }
        pump.rxRefused++;
        return false;
      },
    };
  }

  /** Pump and channel counters. */
  get netStats(): VhostNetStats {
    return { pump: this.pump, tx: this.tx.stats, rx: this.rx.stats };
  }

  /** Config `mac` as the guest sees it. */
  get mac(): Uint8Array {
    const b = new Uint8Array(6);
    for (let i = 0; i < 6; i++) b[i] = this.readConfig(i, 1);
    return b;
  }

  /** Config `status` as the guest sees it (VIRTIO_NET_S_LINK_UP, VIRTIO_NET_S_ANNOUNCE). */
  get status(): number {
    return Atomics.load(this.#state, NetStateWord.STATUS) & 0xffff;
  }

  /**
   * Set the link state. While the device is active the worker applies it (received frames are
   * dropped while down) and sends the configuration change notification when STATUS was
   * negotiated (§5.1.4); otherwise it takes effect at the next activation.
   * @param up - the new state
   */
  setLinkUp(up: boolean): void {
    const s = this.#state;
    Atomics.store(s, NetStateWord.LINK, up ? 1 : 0);
    if (this.#netCtx === undefined || !this.workerAlive) {
      const st = Atomics.load(s, NetStateWord.STATUS);
      Atomics.store(s, NetStateWord.STATUS, up ? st | NetStatus.LINK_UP : st & ~NetStatus.LINK_UP);
      return;
    }
    this.rx.dataBell.ring();
  }

  /**
   * Ask the driver to announce itself (VIRTIO_NET_S_ANNOUNCE, §5.1.6.5.4); the worker sets the
   * bit and sends the configuration change notification.
   * @returns false (nothing done) unless the device is active and GUEST_ANNOUNCE was negotiated
   */
  announce(): boolean {
    if (this.#netCtx === undefined || !this.#announce || !this.workerAlive) return false;
    Atomics.add(this.#state, NetStateWord.ANNOUNCE_REQ, 1);
    this.rx.dataBell.ring();
    return true;
  }

  /** DRIVER_OK: start the worker's device, attach the back-end to the rx channel, start the pump. */
  override activate(ctx: DeviceContext): void {
    this.#netCtx = ctx;
    this.#announce = hasFeature(ctx.features, NetFeature.GUEST_ANNOUNCE);
    super.activate(ctx);
    if (!this.#attached) {
      this.#attached = true;
      this.backend.attach(this.#sink);
    }
    this.#startPump();
  }

  /**
   * The device was reset: fence and reset the worker's device, detach the back-end (frames it
   * holds for the guest are stale), restore `mac` and the announce bit.
   */
  override reset(): void {
    this.#netCtx = undefined;
    super.reset();
    if (this.#attached) {
      this.#attached = false;
      this.backend.detach();
    }
    this.#resetConfig();
  }

  /** Stop the pump and terminate the worker. */
  override async close(): Promise<void> {
    this.#closed = true;
    this.tx.dataBell.ring();
    this.rx.spaceBell.ring();
    if (this.#attached) {
      this.#attached = false;
      this.backend.detach();
    }
    await super.close();
  }

  #resetConfig(): void {
    const s = this.#state;
    const m = this.#defaultMac;
    Atomics.store(s, NetStateWord.MAC_HI, (m[0]! << 8) | m[1]!);
    Atomics.store(s, NetStateWord.MAC_LO, (m[2]! << 24) | (m[3]! << 16) | (m[4]! << 8) | m[5]!);
    Atomics.store(
      s,
      NetStateWord.STATUS,
      Atomics.load(s, NetStateWord.LINK) !== 0 ? NetStatus.LINK_UP : 0,
    );
  }

  #startPump(): void {
    if (this.#pumping || this.#closed) return;
    this.#pumping = true;
    void this.#txPump();
    void this.#spacePump();
  }

  /** Guest → network: drain the tx channel into the back-end at each doorbell. */
  async #txPump(): Promise<void> {
    const tx = this.tx;
    const bell = tx.dataBell;
    const pump = this.pump;
    const backend = this.backend;
    while (!this.#closed) {
      bell.take();
      pump.txWakeups++;
      for (let f = tx.peek(); f !== undefined; f = tx.peek()) {
        let ok = false;
        try {
          ok = backend.transmit(f);
        } catch {
          // The NetBackend contract says never throw; a buggy back-end must not stop the pump.
        }
        pump.txFrames++;
        if (!ok) pump.txBackendDrops++;
        tx.shift();
      }
      if (bell.pending() === 0) await bell.wait();
    }
  }

  /** Network → guest back-pressure: the worker freed rx slots after a refusal → `rxReady`. */
  async #spacePump(): Promise<void> {
    const bell = this.rx.spaceBell;
    while (!this.#closed) {
      if (bell.pending() === 0) await bell.wait();
      bell.take();
      if (this.#closed) break;
      this.pump.spaceWakeups++;
      if (this.#attached) {
        try {
          this.backend.rxReady?.();
        } catch {
          // Same contract: never let a back-end stop the pump.
        }
      }
    }
  }
}

/**
 * A vhost-net device over `backend` (see {@link VhostNetDevice}).
 * @param backend - the network on the VMM thread
 * @param options - device options, channel size, worker and timeouts
 */
export function createVhostNet(backend: NetBackend, options: VhostNetOptions = {}): VhostNetDevice {
  return new VhostNetDevice(backend, options);
}
