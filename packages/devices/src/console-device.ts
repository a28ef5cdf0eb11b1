import { VirtioError } from "@virtio-ts/memory";
import {
  ConsoleConfig,
  ConsoleControl,
  ConsoleEvent,
  ConsoleFeature,
  ConsoleResize,
  type ConsoleSize,
  DeviceId,
  Feature,
  featureMask,
  hasFeature,
} from "@virtio-ts/spec";
import {
  type DeviceContext,
  type DeviceModel,
  DeviceStateFormatError,
  DeviceStateMismatchError,
} from "@virtio-ts/transport";
import { checkQueueSizeOption, DescriptorChain, type DeviceQueue } from "@virtio-ts/virtqueue";
import type { ConsoleBackend, ConsoleInputSink } from "./console-backend.js";

/** What a {@link ConsoleDevice} knows about one of its ports ({@link ConsoleDevice.portState}). */
export interface ConsolePortState {
  /** The port exists (configured or hot-plugged, not removed). */
  readonly exists: boolean;
  /** The driver sent PORT_READY 1 (multiport). */
  readonly ready: boolean;
  /** The guest opened the port (PORT_OPEN 1 from the driver, multiport). */
  readonly guestOpen: boolean;
  /** The host side is open. */
  readonly hostOpen: boolean;
  /** Input bytes waiting for guest receive buffers. */
  readonly pendingInput: number;
}

/** How one port of a {@link ConsoleDevice} looks to the guest. */
export interface ConsolePortOptions {
  /** Name sent with PORT_NAME (UTF-8, at most 255 bytes), or none. */
  readonly name?: string;
  /** Whether the port is nominated a console with CONSOLE_PORT. Default: true for port 0. */
  readonly console?: boolean;
  /** Whether the host side is open (PORT_OPEN 1 sent after PORT_READY). Default true. */
  readonly open?: boolean;
}

/** Options of a {@link ConsoleDevice}. */
export interface ConsoleDeviceOptions {
  /** Maximum size of every queue (a power of 2, 2 to 32768). Default 64. */
  readonly queueSize?: number;
  /** The ports that exist from the start, by number (default: port 0 only). */
  readonly ports?: readonly ConsolePortOptions[];
  /**
   * `max_nr_ports` (1 to 0x7fff): ports the device supports, including hot-plugged ones.
   * Default `ports.length` (at least 1).
   */
  readonly maxPorts?: number;
  /** Offer VIRTIO_CONSOLE_F_MULTIPORT. Default: `maxPorts > 1`. */
  readonly multiport?: boolean;
  /** Offer VIRTIO_CONSOLE_F_SIZE with this initial size. Default: SIZE not offered. */
  readonly size?: ConsoleSize;
  /** Offer VIRTIO_CONSOLE_F_EMERG_WRITE. Default true. */
  readonly emergencyWrite?: boolean;
  /** Bytes of input kept per port while the guest has no receive buffer (1 to 2^24). Default 65536. */
  readonly pendingInputBytes?: number;
  /** Bytes of one transmit buffer passed to the back-end at most; the rest is dropped. Default 1 MiB. */
  readonly maxTransmitBytes?: number;
}

/** Counters of a {@link ConsoleDevice} (mutated in place). */
export interface ConsoleDeviceStats {
  /** Bytes the guest transmitted that reached the back-end. */
  txBytes: number;
  /** Transmit bytes dropped: past `maxTransmitBytes`, or for a port that does not exist. */
  txDropped: number;
  /** Bytes copied into guest receive buffers. */
  rxBytes: number;
  /** Host input bytes dropped because the port's pending buffer was full. */
  inputDropped: number;
  /** Control messages received from the driver. */
  controlIn: number;
  /** Control messages queued for the driver. */
  controlOut: number;
  /** Control messages not sent because the outbox was full or the buffer too small (truncated). */
  controlDropped: number;
  /** Malformed buffers and control messages (also reported through `ctx.noteFault`). */
  malformed: number;
  /** Bytes written to `emerg_wr`. */
  emergencyWrites: number;
}

/** Why a console buffer or control message was refused. */
export type ConsoleFaultCode =
  /** A control message shorter than `struct virtio_console_control` (8 bytes). */
  | "console-short-control"
  /** A control message naming a port that does not exist or is not ready. */
  | "console-bad-port"
  /** A control event the driver must not send, or one out of sequence (§5.3.6.2). */
  | "console-bad-event"
  /** A device-readable descriptor in a receive queue (§5.3.6.1). */
  | "console-readable-in-rx"
  /** A device-writable descriptor in a transmit queue (§5.3.6.1). */
  | "console-writable-in-tx";

/**
 * The driver sent a malformed console buffer or control message (a guest fault the device
 * survives): reported through `ctx.noteFault`, never thrown; the buffer is returned used with
 * length 0 and the device keeps serving.
 */
export class ConsoleFault extends VirtioError {
  /** @inheritdoc */
  readonly code: ConsoleFaultCode;
  /** The port (or control message `id`) involved, or -1. */
  readonly port: number;
  /** The offending value (event number, length), or 0. */
  readonly value: number;

  /**
   * @param code - what is wrong
   * @param port - port or control id
   * @param value - offending value
   */
  constructor(code: ConsoleFaultCode, port: number, value: number) {
    super(`virtio-console ${code} (port ${port}, value ${value})`);
    this.code = code;
    this.port = port;
    this.value = value;
  }
}

interface TextEncoderLike {
  encode(s: string): Uint8Array;
}

function utf8(s: string): Uint8Array {
  const Enc = (globalThis as { TextEncoder?: new () => TextEncoderLike }).TextEncoder;
  if (Enc !== undefined) return new Enc().encode(s);
  // No TextEncoder: code points below 0x80 only (names are usually ASCII).
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i) & 0x7f;
  return out;
}

/** Per-port state. Pending input is a fixed-capacity byte ring allocated with the port. */
class Port {
  exists = false;
  console = false;
  name: Uint8Array | undefined = undefined;
  hostOpen = true;
  /** PORT_READY 1 received (multiport). */
  ready = false;
  /** The guest opened the port (PORT_OPEN 1, multiport). */
  guestOpen = false;
  /** The back-end returned false from write: transmit paused. */
  txBlocked = false;
  /** Transmit requested while another port's transmit loop was running. */
  txAgain = false;
  /** The pending buffer filled up: tell the back-end when it has room. */
  full = false;
  pending: Uint8Array;
  head = 0;
  len = 0;

  constructor(
    readonly id: number,
    capacity: number,
  ) {
    this.pending = new Uint8Array(capacity);
  }

  configure(o: ConsolePortOptions): void {
    this.exists = true;
    this.console = o.console ?? this.id === 0;
    this.hostOpen = o.open ?? true;
    this.name = undefined;
    if (o.name !== undefined) {
      const n = utf8(o.name);
      if (n.length > 255) throw new RangeError(`port name must be at most 255 UTF-8 bytes`);
      this.name = n;
    }
  }

  clearSession(): void {
    this.ready = false;
    this.guestOpen = false;
    this.txBlocked = false;
  }
}

const CTRL_RX = 2;
const CTRL_TX = 3;

const STATE_MAGIC = 0x4e435456; // "VTCN"
const STATE_VERSION = 1;
const STATE_HEADER = 16;
const PORT_HEADER = 6;
const P_EXISTS = 1;
const P_CONSOLE = 2;
const P_HOST_OPEN = 4;
const P_READY = 8;
const P_GUEST_OPEN = 16;
const P_NAMED = 32;
/** The longest control message the device sends: PORT_NAME with a 255-byte name. */
const CONTROL_MAX = ConsoleControl.SIZE + 255;

/**
 * The virtio-console device model (VIRTIO 1.3 §5.3): port 0 on queues 0/1 and, with
 * VIRTIO_CONSOLE_F_MULTIPORT, control queues 2/3 and ports 1… on queues 4/5, 6/7…, served by a
 * {@link ConsoleBackend}. Offered: SIZE (when `options.size` is given), MULTIPORT (when more
 * than one port is possible), EMERG_WRITE (by default); ring features INDIRECT_DESC, EVENT_IDX,
 * RING_PACKED and RING_RESET.
 *
 * Multiport handshake (§5.3.6.2): on DEVICE_READY 1 the device sends DEVICE_ADD for every port;
 * on PORT_READY 1 for a port it sends CONSOLE_PORT (console ports), PORT_NAME (named ports) and
 * PORT_OPEN 1 (host side open); PORT_OPEN from the driver opens or closes the guest side and is
 * reported to `backend.portOpen`. Control messages for the driver wait in a bounded outbox until
 * the driver posts control receive buffers. Ports can be hot-plugged with
 * {@link ConsoleDevice.addPort} / {@link ConsoleDevice.removePort}.
 *
 * Input: host bytes go straight into posted receive buffers, or into a bounded per-port pending
 * buffer (`pendingInputBytes`); beyond it they are dropped and counted. With MULTIPORT, input is
 * delivered only after the guest opened the port (Linux discards data for closed ports).
 *
 * Output: each transmit buffer is passed to `backend.write` as zero-copy views of guest memory,
 * at most `maxTransmitBytes` per buffer. A back-end returning `false` pauses that port's queue.
 *
 * Suspend / resume: {@link ConsoleDevice.saveState} carries the host input not yet delivered,
 * the multiport session, hot-plugged ports, waiting control messages and the size; requests
 * in the rings move with the core's state.
 *
 * Hostile input (counted with `ctx.noteFault` as a {@link ConsoleFault}, buffer returned with
 * length 0, device keeps serving): readable descriptors in a receive queue, writable ones in a
 * transmit queue (§5.3.6.1), control messages shorter than 8 bytes, naming a port that does not
 * exist or is not ready, or carrying an event the driver must not send. A hostile *ring* puts
 * the device into DEVICE_NEEDS_RESET through the core.
 *
 * @example
 * ```ts
 * const backend: ConsoleBackend = { write: (_port, data) => { log(data); return true; } };
 * const device = new MmioDevice(new ConsoleDevice(backend, { size: { cols: 80, rows: 25 } }), { memory });
 * ```
 */
export class ConsoleDevice implements DeviceModel, ConsoleInputSink {
  /** @inheritdoc */
  readonly deviceId = DeviceId.CONSOLE;
  /** @inheritdoc */
  readonly features: bigint;
  /** @inheritdoc */
  readonly queueMaxSizes: readonly number[];
  /** @inheritdoc */
  readonly configSize = ConsoleConfig.SIZE;
  /** The back-end. */
  readonly backend: ConsoleBackend;
  /** `max_nr_ports`. */
  readonly maxPorts: number;
  /** Counters. */
  readonly stats: ConsoleDeviceStats = {
    txBytes: 0,
    txDropped: 0,
    rxBytes: 0,
    inputDropped: 0,
    controlIn: 0,
    controlOut: 0,
    controlDropped: 0,
    malformed: 0,
    emergencyWrites: 0,
  };

  readonly #cfg = new DataView(new ArrayBuffer(ConsoleConfig.SIZE));
  readonly #ports: Port[] = [];
  // One cursor per kind of queue work: a back-end callback may re-enter another kind (a
  // `write` that calls `input`) while a chain is being handled.
  readonly #rxChain: DescriptorChain;
  readonly #txChain: DescriptorChain;
  readonly #ctrlRxChain: DescriptorChain;
  readonly #ctrlTxChain: DescriptorChain;
  readonly #pendingBytes: number;
  #txBusy = false;
  readonly #ctrl = new Uint8Array(ConsoleControl.SIZE);
  readonly #emerg = new Uint8Array(1);
  readonly #views: Uint8Array[] = [];
  readonly #maxTx: number;
  readonly #outboxMax: number;
  #outbox: Uint8Array[] = [];
  #ctx: DeviceContext | undefined;
  #multiport = false;
  #driverReady = false;

  /**
   * @param backend - where output goes and input comes from (its `attach` is called now)
   * @param options - ports, size, limits
   * @throws RangeError naming the bad option
   */
  constructor(backend: ConsoleBackend, options: ConsoleDeviceOptions = {}) {
    const qs = checkQueueSizeOption("options.queueSize", options.queueSize ?? 64);
    const specs = options.ports ?? [{}];
    const maxPorts = options.maxPorts ?? Math.max(1, specs.length);
    if (!Number.isInteger(maxPorts) || maxPorts < 1 || maxPorts > 0x7fff) {
      throw new RangeError(`options.maxPorts must be an integer in [1, 32767], got ${maxPorts}`);
    }
    if (specs.length > maxPorts) {
      throw new RangeError(`options.ports has ${specs.length} ports, more than maxPorts`);
    }
    const multiport = options.multiport ?? maxPorts > 1;
    if (!multiport && (maxPorts > 1 || specs.length > 1)) {
      throw new RangeError("options.multiport must be true for more than one port");
    }
    const pendingBytes = options.pendingInputBytes ?? 65536;
    if (!Number.isInteger(pendingBytes) || pendingBytes < 1 || pendingBytes > 1 << 24) {
      throw new RangeError(
        `options.pendingInputBytes must be an integer in [1, 2^24], got ${pendingBytes}`,
      );
    }
    const maxTx = options.maxTransmitBytes ?? 1 << 20;
    if (!Number.isInteger(maxTx) || maxTx < 1) {
      throw new RangeError(`options.maxTransmitBytes must be a positive integer, got ${maxTx}`);
    }
    this.backend = backend;
    this.maxPorts = maxPorts;
    this.#maxTx = maxTx;
    // DEVICE_ADD + CONSOLE_PORT + PORT_NAME + PORT_OPEN + RESIZE + a hot-plug pair per port.
    this.#outboxMax = 8 * maxPorts + 16;
    this.#rxChain = new DescriptorChain(qs);
    this.#txChain = new DescriptorChain(qs);
    this.#ctrlRxChain = new DescriptorChain(qs);
    this.#ctrlTxChain = new DescriptorChain(qs);
    for (let i = 0; i < maxPorts; i++) {
      // Pending buffers of absent ports are allocated on addPort.
      const p = new Port(i, i < specs.length ? pendingBytes : 0);
      if (i < specs.length) p.configure(specs[i]!);
      this.#ports.push(p);
    }
    this.#pendingBytes = pendingBytes;
    // §5.3.2: port 0's queues always exist; the others only with MULTIPORT.
    this.queueMaxSizes = new Array<number>(multiport ? 2 * (maxPorts + 1) : 2).fill(qs);

    let f = [
      Feature.RING_INDIRECT_DESC,
      Feature.RING_EVENT_IDX,
      Feature.RING_PACKED,
      Feature.RING_RESET,
    ].reduce((m, bit) => m | featureMask(bit), 0n);
    if (multiport) f |= featureMask(ConsoleFeature.MULTIPORT);
    if (options.emergencyWrite ?? true) f |= featureMask(ConsoleFeature.EMERG_WRITE);
    if (options.size !== undefined) {
      f |= featureMask(ConsoleFeature.SIZE);
      checkSize(options.size.cols, options.size.rows, "options.size");
      this.#cfg.setUint16(ConsoleConfig.COLS, options.size.cols, true);
      this.#cfg.setUint16(ConsoleConfig.ROWS, options.size.rows, true);
    }
    this.features = f;
    this.#cfg.setUint32(ConsoleConfig.MAX_NR_PORTS, maxPorts, true);
    backend.attach?.(this);
  }

  /** The console size (`cols`, `rows`) last set. */
  get size(): ConsoleSize {
    return {
      cols: this.#cfg.getUint16(ConsoleConfig.COLS, true),
      rows: this.#cfg.getUint16(ConsoleConfig.ROWS, true),
    };
  }

  /** Whether the driver negotiated MULTIPORT (valid after activation). */
  get multiport(): boolean {
    return this.#multiport;
  }

  /** Control messages waiting for control receive buffers. */
  get controlPending(): number {
    return this.#outbox.length;
  }

  /**
   * State of port `port` as the device sees it.
   * @param port - port number
   * @throws RangeError naming `port` if it is not below `maxPorts`
   */
  portState(port: number): ConsolePortState {
    const p = this.#port(port, "port");
    return {
      exists: p.exists,
      ready: p.ready,
      guestOpen: p.guestOpen,
      hostOpen: p.hostOpen,
      pendingInput: p.len,
    };
  }

  /** @inheritdoc */
  readConfig(offset: number, size: 1 | 2 | 4): number {
    // §5.3.5: emerg_wr is write-only in spirit; it reads as 0.
    const c = this.#cfg;
    if (size === 1) return c.getUint8(offset);
    if (size === 2) return c.getUint16(offset, true);
    return c.getUint32(offset, true);
  }

  /**
   * §5.3.5.1: the device MUST allow a write to `emerg_wr` even on an unconfigured device, so
   * the core forwards it before FEATURES_OK.
   */
  acceptsEarlyConfigWrite(offset: number, _size: 1 | 2 | 4): boolean {
    return offset === ConsoleConfig.EMERG_WR;
  }

  /** Only `emerg_wr` is driver-writable (§5.3.4); other writes are ignored. */
  writeConfig(offset: number, _size: 1 | 2 | 4, value: number): void {
    if (offset !== ConsoleConfig.EMERG_WR) return;
    if (!hasFeature(this.features, ConsoleFeature.EMERG_WRITE)) return;
    // §5.3.5.1: the device SHOULD transmit the lower byte written to emerg_wr.
    this.stats.emergencyWrites++;
    const b = value & 0xff;
    if (this.backend.emergencyWrite !== undefined) this.backend.emergencyWrite(b);
    else {
      this.#emerg[0] = b;
      this.backend.write(0, this.#emerg);
    }
  }

  /** @inheritdoc */
  activate(ctx: DeviceContext): void {
    this.#ctx = ctx;
    this.#multiport = hasFeature(ctx.features, ConsoleFeature.MULTIPORT);
    // Queues may already hold buffers.
    this.#deliver(this.#ports[0]!);
    this.#transmit(this.#ports[0]!);
  }

  /** @inheritdoc */
  onQueueNotify(index: number): void {
    if (index > 1 && !this.#multiport) return;
    if (index === CTRL_RX) this.#flushControl();
    else if (index === CTRL_TX) this.#control();
    else {
      const p = this.#ports[index < 2 ? 0 : (index >> 1) - 1];
      if (p === undefined) return;
      if ((index & 1) === 0) this.#deliver(p);
      else this.#transmit(p);
    }
  }

  /** Nothing is held across calls: buffers are completed before every call returns. */
  onQueueReset(_index: number): void {}

  /** Forget the session (handshake state, control outbox); pending host input stays. */
  reset(): void {
    this.#ctx = undefined;
    this.#multiport = false;
    this.#driverReady = false;
    this.#outbox = [];
    for (const p of this.#ports) p.clearSession();
  }

  // ---- host API ----

  /** @inheritdoc */
  input(port: number, data: Uint8Array): number {
    const p = this.#port(port, "port");
    if (!p.exists) throw new RangeError(`port must be an existing port, got ${port}`);
    let taken = 0;
    const cap = p.pending.length;
    for (;;) {
      const n = Math.min(cap - p.len, data.length - taken);
      if (n > 0) {
        const tail = (p.head + p.len) % cap;
        const first = Math.min(n, cap - tail);
        p.pending.set(data.subarray(taken, taken + first), tail);
        if (first < n) p.pending.set(data.subarray(taken + first, taken + n), 0);
        p.len += n;
        taken += n;
      }
      if (p.len === cap) p.full = true;
      const before = p.len;
      this.#guardDeliver(p);
      if (taken === data.length || p.len === before) break;
    }
    if (taken < data.length) this.stats.inputDropped += data.length - taken;
    return taken;
  }

  /** @inheritdoc */
  inputRoom(port: number): number {
    const p = this.#port(port, "port");
    return p.exists ? p.pending.length - p.len : 0;
  }

  /** @inheritdoc */
  resumeOutput(port: number): void {
    const p = this.#port(port, "port");
    if (!p.txBlocked) return;
    p.txBlocked = false;
    const ctx = this.#ctx;
    if (ctx !== undefined) ctx.guard(() => this.#transmit(p));
  }

  /**
   * Change the console size: update `cols` / `rows`, send a configuration change notification
   * when SIZE was negotiated (§5.3.6: applies to port 0), and with MULTIPORT send RESIZE to every
   * ready console port (§5.3.6.2).
   * @param cols - columns, 0 to 65535
   * @param rows - rows, 0 to 65535
   * @throws RangeError naming `cols` or `rows`
   */
  resize(cols: number, rows: number): void {
    checkSize(cols, rows, "");
    this.#cfg.setUint16(ConsoleConfig.COLS, cols, true);
    this.#cfg.setUint16(ConsoleConfig.ROWS, rows, true);
    const ctx = this.#ctx;
    if (ctx === undefined || !hasFeature(ctx.features, ConsoleFeature.SIZE)) return;
    ctx.notifyConfigChange();
    if (!this.#multiport) return;
    for (const p of this.#ports) {
      if (!p.exists || !p.ready || !p.console) continue;
      const m = new Uint8Array(ConsoleControl.SIZE + ConsoleResize.SIZE);
      const v = new DataView(m.buffer);
      v.setUint32(ConsoleControl.ID, p.id, true);
      v.setUint16(ConsoleControl.EVENT, ConsoleEvent.RESIZE, true);
      v.setUint16(ConsoleControl.SIZE + ConsoleResize.COLS, cols, true);
      v.setUint16(ConsoleControl.SIZE + ConsoleResize.ROWS, rows, true);
      this.#send(m);
    }
    ctx.guard(() => this.#flushControl());
  }

  /**
   * Open or close the host side of `port`; with MULTIPORT a ready port gets PORT_OPEN.
   * @param port - port number
   * @param open - the new state
   * @throws RangeError naming `port` if it is not an existing port
   */
  setHostOpen(port: number, open: boolean): void {
    const p = this.#port(port, "port");
    if (!p.exists) throw new RangeError(`port must be an existing port, got ${port}`);
    if (p.hostOpen === open) return;
    p.hostOpen = open;
    if (this.#multiport && p.ready) {
      this.#sendControl(p.id, ConsoleEvent.PORT_OPEN, open ? 1 : 0);
      this.#ctx?.guard(() => this.#flushControl());
    }
  }

  /**
   * Hot-plug port `port` (MULTIPORT): sends DEVICE_ADD if the driver is ready.
   * @param port - a port number below `maxPorts` that does not exist
   * @param options - name, console, host open
   * @throws RangeError naming `port` (out of range or already there)
   */
  addPort(port: number, options: ConsolePortOptions = {}): void {
    const p = this.#port(port, "port");
    // §5.3.6.2.1: never a port that exists, nor one ≥ max_nr_ports.
    if (p.exists) throw new RangeError(`port ${port} already exists`);
    if (p.pending.length === 0) p.pending = new Uint8Array(this.#pendingBytes);
    p.configure(options);
    p.head = 0;
    p.len = 0;
    p.clearSession();
    if (this.#multiport && this.#driverReady) {
      this.#sendControl(p.id, ConsoleEvent.DEVICE_ADD, 0);
      this.#ctx?.guard(() => this.#flushControl());
    }
  }

  /**
   * Hot-unplug port `port`: sends DEVICE_REMOVE if the driver knows it. Pending input is
   * discarded.
   * @param port - an existing port number
   * @throws RangeError naming `port` if it does not exist
   */
  removePort(port: number): void {
    const p = this.#port(port, "port");
    // §5.3.6.2.1: only a port created with a previous DEVICE_ADD.
    if (!p.exists) throw new RangeError(`port must be an existing port, got ${port}`);
    p.exists = false;
    p.len = 0;
    p.clearSession();
    if (this.#multiport && this.#driverReady) {
      this.#sendControl(p.id, ConsoleEvent.DEVICE_REMOVE, 0);
      this.#ctx?.guard(() => this.#flushControl());
    }
  }

  // ---- suspend / resume ----

  /**
   * Suspend / resume: what the console holds that is neither in guest memory nor in the
   * core's queues — host input not yet delivered (per port), the multiport handshake (the
   * driver's DEVICE_READY, each port's PORT_READY and guest-side PORT_OPEN), the ports that
   * exist with their names, console nomination and host-side state (hot-plugged ones
   * included), control messages waiting for control receive buffers, and the console size.
   * A back-end's paused output (`write` returned false) is the source back-end's state and does
   * not move: the destination's back-end starts accepting.
   *
   * Layout (little-endian): magic "VTCN" u32, version u8, flags u8 (bit 0 DEVICE_READY
   * received), max_nr_ports u16, cols u16, rows u16, outbox count u16, reserved u16; per
   * port: flags u8 (exists, console, host open, ready, guest open, named), name length u8,
   * pending length u32, the name, the pending bytes; per waiting control message: length u16,
   * the bytes.
   * @returns versioned bytes for {@link ConsoleDevice.restoreState}
   */
  saveState(): Uint8Array {
    let len = STATE_HEADER;
    for (const p of this.#ports) len += PORT_HEADER + (p.name?.length ?? 0) + p.len;
    for (const m of this.#outbox) len += 2 + m.length;
    const out = new Uint8Array(len);
    const v = new DataView(out.buffer);
    v.setUint32(0, STATE_MAGIC, true);
    v.setUint8(4, STATE_VERSION);
    v.setUint8(5, this.#driverReady ? 1 : 0);
    v.setUint16(6, this.maxPorts, true);
    v.setUint16(8, this.#cfg.getUint16(ConsoleConfig.COLS, true), true);
    v.setUint16(10, this.#cfg.getUint16(ConsoleConfig.ROWS, true), true);
    v.setUint16(12, this.#outbox.length, true);
    let at = STATE_HEADER;
    for (const p of this.#ports) {
      const flags =
        (p.exists ? P_EXISTS : 0) |
        (p.console ? P_CONSOLE : 0) |
        (p.hostOpen ? P_HOST_OPEN : 0) |
        (p.ready ? P_READY : 0) |
        (p.guestOpen ? P_GUEST_OPEN : 0) |
        (p.name !== undefined ? P_NAMED : 0);
      v.setUint8(at, flags);
      v.setUint8(at + 1, p.name?.length ?? 0);
      v.setUint32(at + 2, p.len, true);
      at += PORT_HEADER;
      if (p.name !== undefined) {
        out.set(p.name, at);
        at += p.name.length;
      }
      // The pending ring from its head, unwrapped.
      const cap = p.pending.length;
      const first = Math.min(p.len, cap - p.head);
      out.set(p.pending.subarray(p.head, p.head + first), at);
      out.set(p.pending.subarray(0, p.len - first), at + first);
      at += p.len;
    }
    for (const m of this.#outbox) {
      v.setUint16(at, m.length, true);
      out.set(m, at + 2);
      at += 2 + m.length;
    }
    return out;
  }

  /**
   * Take back {@link ConsoleDevice.saveState}'s bytes, on a fresh device (before activation)
   * built with the same `maxPorts` and a `pendingInputBytes` large enough for the input saved.
   * The bytes are untrusted: everything is checked before anything changes.
   * @param state - the bytes
   * @throws DeviceStateMismatchError when the state was saved from a console with another
   *   `maxPorts` or holds more pending input than this one keeps; DeviceStateFormatError
   *   naming the offending byte for anything malformed
   */
  restoreState(state: Uint8Array): void {
    const bad = (why: string, at: number): never => {
      throw new DeviceStateFormatError(`virtio-console state: ${why}`, at);
    };
    if (state.length < STATE_HEADER) bad("shorter than its header", 0);
    const v = new DataView(state.buffer, state.byteOffset, state.byteLength);
    if (v.getUint32(0, true) !== STATE_MAGIC) bad("no VTCN magic", 0);
    if (v.getUint8(4) !== STATE_VERSION) bad(`version ${v.getUint8(4)}`, 4);
    const flags = v.getUint8(5);
    if ((flags & ~1) !== 0 || v.getUint16(14, true) !== 0) bad("reserved bits set", 5);
    const maxPorts = v.getUint16(6, true);
    if (maxPorts !== this.maxPorts) {
      throw new DeviceStateMismatchError(
        "console.maxPorts",
        `saved ${maxPorts} ports, this console has ${this.maxPorts}`,
      );
    }
    const nOut = v.getUint16(12, true);
    if (nOut > this.#outboxMax) bad(`${nOut} control messages waiting`, 12);
    let at = STATE_HEADER;
    const need = (n: number, what: string): void => {
      if (at + n > state.length) bad(`truncated ${what}`, at);
    };
    const ports: { flags: number; name: Uint8Array | undefined; pending: Uint8Array }[] = [];
    for (let i = 0; i < maxPorts; i++) {
      need(PORT_HEADER, `port ${i}`);
      const pf = v.getUint8(at);
      const nameLen = v.getUint8(at + 1);
      const pendingLen = v.getUint32(at + 2, true);
      const exists = (pf & P_EXISTS) !== 0;
      const session = pf & (P_READY | P_GUEST_OPEN);
      if (
        (pf & ~(P_EXISTS | P_CONSOLE | P_HOST_OPEN | P_READY | P_GUEST_OPEN | P_NAMED)) !== 0 ||
        ((pf & P_NAMED) === 0 && nameLen !== 0) ||
        (!exists && (session !== 0 || pendingLen !== 0)) ||
        ((pf & P_GUEST_OPEN) !== 0 && (pf & P_READY) === 0)
      ) {
        bad(`port ${i} flags 0x${pf.toString(16)}`, at);
      }
      if (pendingLen > this.#pendingBytes) {
        throw new DeviceStateMismatchError(
          `console.ports[${i}].pendingInput`,
          `${pendingLen} bytes saved, this console keeps ${this.#pendingBytes}`,
        );
      }
      at += PORT_HEADER;
      need(nameLen + pendingLen, `port ${i} name and input`);
      const name = (pf & P_NAMED) !== 0 ? state.slice(at, at + nameLen) : undefined;
      at += nameLen;
      ports.push({ flags: pf, name, pending: state.subarray(at, at + pendingLen) });
      at += pendingLen;
    }
    const outbox: Uint8Array[] = [];
    for (let k = 0; k < nOut; k++) {
      need(2, `control message ${k}`);
      const n = v.getUint16(at, true);
      if (n < ConsoleControl.SIZE || n > CONTROL_MAX) bad(`control message of ${n} bytes`, at);
      at += 2;
      need(n, `control message ${k}`);
      outbox.push(state.slice(at, at + n));
      at += n;
    }
    if (at !== state.length) bad(`${state.length - at} bytes after the state`, at);
    // Checked: apply.
    this.#driverReady = (flags & 1) !== 0;
    this.#cfg.setUint16(ConsoleConfig.COLS, v.getUint16(8, true), true);
    this.#cfg.setUint16(ConsoleConfig.ROWS, v.getUint16(10, true), true);
    this.#outbox = outbox;
    ports.forEach((s, i) => {
      const p = this.#ports[i]!;
      p.exists = (s.flags & P_EXISTS) !== 0;
      p.console = (s.flags & P_CONSOLE) !== 0;
      p.hostOpen = (s.flags & P_HOST_OPEN) !== 0;
      p.ready = (s.flags & P_READY) !== 0;
      p.guestOpen = (s.flags & P_GUEST_OPEN) !== 0;
      p.name = s.name;
      p.txBlocked = false;
      p.txAgain = false;
      if (p.exists && p.pending.length === 0) p.pending = new Uint8Array(this.#pendingBytes);
      p.pending.set(s.pending, 0);
      p.head = 0;
      p.len = s.pending.length;
      p.full = p.len > 0 && p.len === p.pending.length;
    });
  }

  // ---- queues ----

  #port(port: number, name: string): Port {
    const p = Number.isInteger(port) ? this.#ports[port] : undefined;
    if (p === undefined) {
      throw new RangeError(`${name} must be a port number in [0, ${this.maxPorts}), got ${port}`);
    }
    return p;
  }

  #guardDeliver(p: Port): void {
    const ctx = this.#ctx;
    if (ctx !== undefined) ctx.guard(() => this.#deliver(p));
  }

  /** Move pending input of `p` into posted receive buffers. `pop` errors propagate. */
  #deliver(p: Port): void {
    const ctx = this.#ctx;
    if (ctx === undefined || ctx.needsReset || p.len === 0 || !p.exists) return;
    if (this.#multiport ? !p.guestOpen : p.id !== 0) return;
    const q = ctx.queue(p.id === 0 ? 0 : 2 * (p.id + 1));
    if (q === undefined) return;
    const chain = this.#rxChain;
    const mem = ctx.memory;
    const cap = p.pending.length;
    let pushed = false;
    while (p.len > 0 && q.pop(chain)) {
      pushed = true;
      if (chain.readableCount > 0) {
        // §5.3.6.1: the driver MUST NOT put a device-readable buffer in a receiveq.
        this.#fault(new ConsoleFault("console-readable-in-rx", p.id, chain.readableBytes));
        q.push(chain.head, 0);
        continue;
      }
      const first = Math.min(p.len, cap - p.head);
      let n = chain.copyToWritable(mem, 0, p.pending.subarray(p.head, p.head + first));
      if (n === first && first < p.len) {
        n += chain.copyToWritable(mem, n, p.pending.subarray(0, p.len - first));
      }
      p.head = (p.head + n) % cap;
      p.len -= n;
      if (p.len === 0) p.head = 0;
      this.stats.rxBytes += n;
      q.push(chain.head, n);
    }
    if (pushed) ctx.signalUsed(p.id === 0 ? 0 : 2 * (p.id + 1));
    if (p.full && p.len < cap) {
      p.full = false;
      this.backend.inputSpace?.(p.id);
    }
  }

  /** Pass transmit buffers of `p` to the back-end. `pop` errors propagate. */
  #transmit(p: Port): void {
    const ctx = this.#ctx;
    if (ctx === undefined || ctx.needsReset) return;
    const qi = p.id === 0 ? 1 : 2 * (p.id + 1) + 1;
    const q = ctx.queue(qi);
    // A write that re-enters (resumeOutput) leaves the work to the loop already running.
    if (q === undefined) return;
    if (this.#txBusy) {
      p.txAgain = true;
      return;
    }
    this.#txBusy = true;
    try {
      this.#transmitLoop(ctx, p, qi, q);
      // Ports kicked from inside a back-end call, once each.
      for (const o of this.#ports) {
        if (!o.txAgain) continue;
        o.txAgain = false;
        const oq = ctx.queue(o.id === 0 ? 1 : 2 * (o.id + 1) + 1);
        if (oq !== undefined) this.#transmitLoop(ctx, o, o.id === 0 ? 1 : 2 * (o.id + 1) + 1, oq);
      }
    } finally {
      this.#txBusy = false;
    }
  }

  #transmitLoop(ctx: DeviceContext, p: Port, qi: number, q: DeviceQueue): void {
    const chain = this.#txChain;
    let pushed = false;
    while (!p.txBlocked && q.pop(chain)) {
      pushed = true;
      if (chain.count > chain.readableCount) {
        // §5.3.6.1: the driver MUST NOT put a device-writable buffer in a transmitq.
        this.#fault(new ConsoleFault("console-writable-in-tx", p.id, chain.writableBytes));
      } else if (!p.exists) {
        this.stats.txDropped += chain.readableBytes;
      } else {
        this.#output(ctx, p, chain);
      }
      // The device writes nothing into a transmit buffer.
      q.push(chain.head, 0);
    }
    if (pushed) ctx.signalUsed(qi);
  }

  #output(ctx: DeviceContext, p: Port, chain: DescriptorChain): void {
    let left = Math.min(chain.readableBytes, this.#maxTx);
    this.stats.txDropped += chain.readableBytes - left;
    const views = this.#views;
    for (let i = 0; i < chain.readableCount && left > 0; i++) {
      const n = Math.min(chain.lens[i]!, left);
      if (n === 0) continue;
      ctx.memory.sg(chain.addrs[i]!, n, views, "read");
      for (let k = 0; k < views.length; k++) {
        this.stats.txBytes += views[k]!.length;
        if (!this.backend.write(p.id, views[k]!)) p.txBlocked = true;
      }
      views.length = 0;
      left -= n;
    }
  }

  // ---- control (§5.3.6.2) ----

  #sendControl(id: number, event: number, value: number, extra?: Uint8Array): void {
    const m = new Uint8Array(ConsoleControl.SIZE + (extra?.length ?? 0));
    const v = new DataView(m.buffer);
    v.setUint32(ConsoleControl.ID, id, true);
    v.setUint16(ConsoleControl.EVENT, event, true);
    v.setUint16(ConsoleControl.VALUE, value, true);
    if (extra !== undefined) m.set(extra, ConsoleControl.SIZE);
    this.#send(m);
  }

  #send(m: Uint8Array): void {
    if (this.#outbox.length >= this.#outboxMax) {
      this.stats.controlDropped++;
      return;
    }
    this.stats.controlOut++;
    this.#outbox.push(m);
  }

  /** Copy queued control messages into control receive buffers. `pop` errors propagate. */
  #flushControl(): void {
    const ctx = this.#ctx;
    if (ctx === undefined || ctx.needsReset || !this.#multiport) return;
    const q = ctx.queue(CTRL_RX);
    if (q === undefined) return;
    const chain = this.#ctrlRxChain;
    let sent = 0;
    let pushed = false;
    while (sent < this.#outbox.length && q.pop(chain)) {
      pushed = true;
      if (chain.readableCount > 0) {
        this.#fault(new ConsoleFault("console-readable-in-rx", -1, chain.readableBytes));
        q.push(chain.head, 0);
        continue;
      }
      const m = this.#outbox[sent++]!;
      const n = chain.copyToWritable(ctx.memory, 0, m);
      if (n < m.length) this.stats.controlDropped++;
      q.push(chain.head, n);
    }
    if (sent > 0) this.#outbox.splice(0, sent);
    if (pushed) ctx.signalUsed(CTRL_RX);
  }

  /** Handle control messages from the driver. `pop` errors propagate. */
  #control(): void {
    const ctx = this.#ctx;
    if (ctx === undefined || ctx.needsReset) return;
    const q = ctx.queue(CTRL_TX);
    if (q === undefined) return;
    const chain = this.#ctrlTxChain;
    const m = this.#ctrl;
    let pushed = false;
    while (q.pop(chain)) {
      pushed = true;
      this.stats.controlIn++;
      if (chain.count > chain.readableCount) {
        this.#fault(new ConsoleFault("console-writable-in-tx", -1, chain.writableBytes));
      } else if (chain.copyFromReadable(ctx.memory, 0, m) < ConsoleControl.SIZE) {
        this.#fault(new ConsoleFault("console-short-control", -1, chain.readableBytes));
      } else {
        // Copied once: the guest may rewrite its buffer meanwhile.
        const id = (m[0]! | (m[1]! << 8) | (m[2]! << 16) | (m[3]! << 24)) >>> 0;
        const event = m[4]! | (m[5]! << 8);
        const value = m[6]! | (m[7]! << 8);
        this.#onControl(id, event, value);
      }
      q.push(chain.head, 0);
    }
    if (pushed) ctx.signalUsed(CTRL_TX);
    this.#flushControl();
  }

  #onControl(id: number, event: number, value: number): void {
    if (event === ConsoleEvent.DEVICE_READY) {
      // §5.3.6.2: id is unused; value 1 success, 0 failure. A second one is out of sequence.
      if (this.#driverReady) {
        this.#fault(new ConsoleFault("console-bad-event", id, event));
        return;
      }
      if (value !== 1) return;
      this.#driverReady = true;
      // §5.3.5 step 3: the device announces its ports with DEVICE_ADD.
      for (const p of this.#ports) {
        if (p.exists) this.#sendControl(p.id, ConsoleEvent.DEVICE_ADD, 0);
      }
      return;
    }
    const p = id < this.#ports.length ? this.#ports[id] : undefined;
    if (event !== ConsoleEvent.PORT_READY && event !== ConsoleEvent.PORT_OPEN) {
      // DEVICE_ADD, DEVICE_REMOVE, CONSOLE_PORT, RESIZE and PORT_NAME are device → driver only.
      this.#fault(new ConsoleFault("console-bad-event", id, event));
      return;
    }
    if (p === undefined || !p.exists || !this.#driverReady) {
      this.#fault(new ConsoleFault("console-bad-port", id, event));
      return;
    }
    if (event === ConsoleEvent.PORT_READY) {
      if (p.ready) {
        this.#fault(new ConsoleFault("console-bad-event", id, event));
        return;
      }
      if (value !== 1) return;
      p.ready = true;
      if (p.console) this.#sendControl(p.id, ConsoleEvent.CONSOLE_PORT, 1);
      if (p.name !== undefined) this.#sendControl(p.id, ConsoleEvent.PORT_NAME, 0, p.name);
      if (p.hostOpen) this.#sendControl(p.id, ConsoleEvent.PORT_OPEN, 1);
      return;
    }
    // PORT_OPEN from the driver: the guest opened or closed its end.
    if (!p.ready) {
      this.#fault(new ConsoleFault("console-bad-port", id, event));
      return;
    }
    const open = value !== 0;
    if (p.guestOpen === open) return;
    p.guestOpen = open;
    this.backend.portOpen?.(p.id, open);
    if (open) this.#deliver(p);
  }

  #fault(e: ConsoleFault): void {
    this.stats.malformed++;
    this.#ctx?.noteFault(e);
  }
}

function checkSize(cols: number, rows: number, prefix: string): void {
  const pre = prefix === "" ? "" : `${prefix}.`;
  if (!Number.isInteger(cols) || cols < 0 || cols > 0xffff) {
    throw new RangeError(`${pre}cols must be an integer in [0, 65535], got ${cols}`);
  }
  if (!Number.isInteger(rows) || rows < 0 || rows > 0xffff) {
    throw new RangeError(`${pre}rows must be an integer in [0, 65535], got ${rows}`);
  }
}
