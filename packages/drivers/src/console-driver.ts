/**
 * virtio-console driver (guest side).
 * @see VIRTIO 1.3 §5.3 "Console Device"
 * @module
 */
import { type GuestMemory, VirtioError } from "@virtio-ts/memory";
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
  MmioInterrupt,
} from "@virtio-ts/spec";
import type { ConfigWritableTransport } from "@virtio-ts/transport";
import {
  checkQueueSizeOption,
  type DriverQueue,
  ringAreaBytes,
  ringLayoutAt,
  type Segment,
} from "@virtio-ts/virtqueue";
import { checkAllocatorPlacement, checkRingPlacement } from "./placement.js";
import { reapAll } from "./reap.js";
import type { SlabAllocator } from "./slab.js";

/** Why the console driver distrusts what the device did. */
export type ConsoleDeviceFaultCode =
  /** The device is not a console (DeviceID is not 3). */
  | "console-not-console"
  /** `max_nr_ports` is 0 with MULTIPORT negotiated. */
  | "console-bad-config"
  /** A control message shorter than 8 bytes, naming an unknown port, or with an unknown event. */
  | "console-bad-control"
  /**
   * The device corrupted a ring (a `RingError` while reaping, `cause`): a used index that jumps,
   * an id not in flight, or a used length larger than the posted buffer
   * (`UsedLenTooLargeError`). Every pending write is rejected with this fault, and so is every
   * later one, until a new driver is set up on a reset device.
   */
  | "console-ring-broken";

/**
 * The console device broke its protocol (drivers distrust devices). Thrown at construction for
 * a bad device; counted in {@link ConsoleDriver.stats} (last one in `lastFault`) for bad
 * completions; the rejection of writes once a ring is broken.
 */
export class ConsoleDeviceFault extends VirtioError {
  /** What the device did wrong. */
  readonly code: ConsoleDeviceFaultCode;
  /** The offending value (used length, port id, event, DeviceID). */
  readonly value: number;

  /**
   * @param code - what went wrong
   * @param message - detail
   * @param value - offending value
   * @param cause - the underlying error (the queue's `RingError`), if any
   */
  constructor(code: ConsoleDeviceFaultCode, message: string, value: number, cause?: unknown) {
    super(`${code}: ${message}`, cause === undefined ? undefined : { cause });
    this.code = code;
    this.value = value;
  }
}

/** Options of a {@link ConsoleDriver}. */
export interface ConsoleDriverOptions {
  /**
   * Guest address of the driver-owned ring area, {@link ConsoleDriver.ringBytes} bytes,
   * 16-aligned: one equal area per queue, in queue order.
   */
  readonly ringBase: number;
  /** Size of every queue, a power of 2 up to QueueNumMax (default min(64, QueueNumMax)). */
  readonly queueSize?: number;
  /** Receive buffers kept posted per port and on the control receiveq (default 4). */
  readonly rxBuffers?: number;
  /** Ports the driver sets up queues for at most (default 8; capped by `max_nr_ports`). */
  readonly maxPorts?: number;
  /** Whether to accept VIRTIO_CONSOLE_F_MULTIPORT when offered (default true). */
  readonly multiport?: boolean;
  /** Whether to accept VIRTIO_F_RING_PACKED when offered (default true). */
  readonly packed?: boolean;
}

/** A change on a port, as reported to {@link ConsoleDriver.onPortEvent} listeners. */
export type ConsolePortEvent =
  | {
      /** The device added the port (DEVICE_ADD) and the driver set it up. */
      readonly kind: "add";
      /** Port number. */
      readonly port: number;
    }
  | {
      /** The device removed the port (DEVICE_REMOVE). */
      readonly kind: "remove";
      /** Port number. */
      readonly port: number;
    }
  | {
      /** The host side opened or closed the port (PORT_OPEN from the device). */
      readonly kind: "host-open";
      /** Port number. */
      readonly port: number;
      /** The new state. */
      readonly open: boolean;
    }
  | {
      /** The port was nominated a console (CONSOLE_PORT). */
      readonly kind: "console";
      /** Port number. */
      readonly port: number;
    }
  | {
      /** The port got its name (PORT_NAME). */
      readonly kind: "name";
      /** Port number. */
      readonly port: number;
      /** The name (UTF-8, invalid sequences replaced). */
      readonly name: string;
    }
  | {
      /** The console size changed (RESIZE, or a configuration change for port 0). */
      readonly kind: "resize";
      /** Port number. */
      readonly port: number;
      /** Columns. */
      readonly cols: number;
      /** Rows. */
      readonly rows: number;
    };

/** What the driver knows about one port. */
export interface ConsolePortInfo {
  /** Port number. */
  readonly id: number;
  /** Name from PORT_NAME, if any. */
  readonly name: string | undefined;
  /** Nominated a console by the device. */
  readonly console: boolean;
  /** The guest side (this driver) has the port open. */
  readonly guestOpen: boolean;
  /** The host side has the port open (PORT_OPEN from the device). */
  readonly hostOpen: boolean;
  /** Last size reported for the port, if any. */
  readonly size: ConsoleSize | undefined;
}

/** Counters of a {@link ConsoleDriver} (mutated in place). */
export interface ConsoleDriverStats {
  /** Bytes received and handed to listeners. */
  rxBytes: number;
  /** Bytes received while no listener was registered (dropped). */
  rxUnheard: number;
  /** Bytes written and used by the device. */
  txBytes: number;
  /** Control messages received. */
  controlIn: number;
  /** Device protocol faults counted (bad used lengths, bad control messages). */
  faults: number;
}

/** The feature bits {@link ConsoleDriver} accepts when offered (§5.3.3). */
export const CONSOLE_DRIVER_FEATURES: bigint = [
  ConsoleFeature.SIZE,
  ConsoleFeature.MULTIPORT,
  ConsoleFeature.EMERG_WRITE,
  Feature.RING_EVENT_IDX,
  Feature.RING_PACKED,
].reduce((m, bit) => m | featureMask(bit), 0n);

const KIND_RX = 0;
const KIND_TX = 1;
const KIND_CTRL_RX = 2;
const KIND_CTRL_TX = 3;
const CTRL_RX = 2;
const CTRL_TX = 3;

/** A posted buffer (the ring token). Receive buffers are reused for the driver's life. */
interface Buf {
  readonly kind: number;
  readonly port: number;
  readonly addr: number;
  len: number;
  write: WriteReq | undefined;
}

interface WriteReq {
  readonly port: number;
  readonly data: Uint8Array;
  off: number;
  chunks: number;
  readonly resolve: () => void;
  readonly reject: (e: unknown) => void;
}

interface PortState {
  added: boolean;
  name: string | undefined;
  console: boolean;
  guestOpen: boolean;
  hostOpen: boolean;
  size: ConsoleSize | undefined;
  rxPosted: boolean;
}

interface TextDecoderLike {
  decode(b: Uint8Array): string;
}

function decodeUtf8(b: Uint8Array): string {
  const Dec = (globalThis as { TextDecoder?: new () => TextDecoderLike }).TextDecoder;
  if (Dec !== undefined) return new Dec().decode(b);
  let s = "";
  for (let i = 0; i < b.length; i++) s += String.fromCharCode(b[i]!);
  return s;
}

/** Queue index of the receiveq of `port` (§5.3.2). */
function rxq(port: number): number {
  return port === 0 ? 0 : 2 * (port + 1);
}

/**
 * Guest-side virtio-console driver over a {@link ConfigWritableTransport} (virtio-mmio or
 * virtio-pci; VIRTIO 1.3 §5.3).
 *
 * Without MULTIPORT it drives port 0 only: receive buffers are kept posted and refilled
 * automatically, {@link ConsoleDriver.write} sends bytes, received bytes go to
 * {@link ConsoleDriver.onReceive} listeners, and a configuration change re-reads the size
 * (§5.3.6). With MULTIPORT it sets up queues for up to `maxPorts` ports and follows the control
 * protocol (§5.3.6.2): it sends DEVICE_READY, answers DEVICE_ADD with PORT_READY (1, or 0 for a
 * port beyond `maxPorts`), answers CONSOLE_PORT with PORT_OPEN 1 (§5.3.6.2.2 MUST), and reports
 * names, host open/close, resizes and removals to {@link ConsoleDriver.onPortEvent} listeners.
 * Generic ports are opened with {@link ConsoleDriver.openPort}.
 *
 * Distrust: malformed control messages (short, unknown port or event, a port added twice) are
 * counted as {@link ConsoleDeviceFault} "console-bad-control" and ignored; a corrupted ring,
 * including a used length larger than the posted buffer, rejects all writes
 * ("console-ring-broken", `cause` the queue's `RingError`).
 *
 * Completion: nothing happens until {@link ConsoleDriver.poll} or
 * {@link ConsoleDriver.onInterrupt} is called.
 *
 * @example
 * ```ts
 * const con = new ConsoleDriver(transport, memory, new SlabAllocator(0x40000, 4096, 64), { ringBase: 0x10000 });
 * con.onReceive((data, port) => print(port, data));
 * await con.write(new TextEncoder().encode("hello\n"));
 * ```
 */
export class ConsoleDriver {
  /** Counters. */
  readonly stats: ConsoleDriverStats = {
    rxBytes: 0,
    rxUnheard: 0,
    txBytes: 0,
    controlIn: 0,
    faults: 0,
  };
  /** The last device fault counted, for diagnostics. */
  lastFault: ConsoleDeviceFault | undefined = undefined;

  readonly #t: ConfigWritableTransport;
  readonly #mem: GuestMemory;
  readonly #slab: SlabAllocator;
  readonly #features: bigint;
  readonly #multiport: boolean;
  readonly #nPorts: number;
  readonly #rxBuffers: number;
  readonly #queues: (DriverQueue<Buf> | undefined)[] = [];
  /** `#complete` bound once, for `reapAll`. */
  readonly #onUsed = (b: Buf, len: number): void => this.#complete(b, len);
  readonly #dirty: boolean[] = [];
  readonly #ports: PortState[] = [];
  readonly #rxListeners = new Set<(data: Uint8Array, port: number) => void>();
  readonly #evListeners = new Set<(e: ConsolePortEvent) => void>();
  readonly #writes: WriteReq[] = [];
  readonly #ctrlOut: Uint8Array[] = [];
  readonly #ro: Segment[] = [{ addr: 0, len: 0 }];
  readonly #none: Segment[] = [];
  readonly #ctrl = new Uint8Array(ConsoleControl.SIZE + 256);
  /** Writes whose every chunk is on a ring (for rejecting them if a ring breaks). */
  readonly #live = new Set<WriteReq>();
  #broken: ConsoleDeviceFault | undefined;

  /**
   * Bytes of the ring area {@link ConsoleDriverOptions.ringBase} must point at.
   * @param queueSize - size of every queue
   * @param maxPorts - ports to set up (1 without MULTIPORT)
   */
  static ringBytes(queueSize: number, maxPorts = 1): number {
    return ringAreaBytes(queueSize) * 2 * (maxPorts + 1);
  }

  /**
   * Initialise the device (§3.1.1, §5.3.5): negotiate, read the configuration, set up the
   * queues, set DRIVER_OK, post receive buffers, and with MULTIPORT send DEVICE_READY.
   *
   * @param transport - the device's transport (it is reset)
   * @param memory - guest memory holding the rings and the allocator's region
   * @param allocator - slots for receive, transmit and control buffers (slot size ≥ 264)
   * @param options - ring area, queue size, buffers, ports
   * @throws TransportError from negotiation / queue setup; ConsoleDeviceFault
   *   "console-not-console" / "console-bad-config" (FAILED is then set); RangeError naming an
   *   invalid option or argument, or naming
   *   `allocator` / `options.ringBase` when the slots or the ring area are not inside guest
   *   memory (or overlap), with the address the memory must reach
   */
  constructor(
    transport: ConfigWritableTransport,
    memory: GuestMemory,
    allocator: SlabAllocator,
    options: ConsoleDriverOptions,
  ) {
    if (allocator.slotSize < ConsoleControl.SIZE + 256) {
      throw new RangeError(`allocator.slotSize must be at least 264, got ${allocator.slotSize}`);
    }
    const rxBuffers = options.rxBuffers ?? 4;
    if (!Number.isInteger(rxBuffers) || rxBuffers < 1) {
      throw new RangeError(`options.rxBuffers must be a positive integer, got ${rxBuffers}`);
    }
    const maxPortsOpt = options.maxPorts ?? 8;
    if (!Number.isInteger(maxPortsOpt) || maxPortsOpt < 1) {
      throw new RangeError(`options.maxPorts must be a positive integer, got ${maxPortsOpt}`);
    }
    checkAllocatorPlacement(memory, allocator);
    this.#t = transport;
    this.#mem = memory;
    this.#slab = allocator;
    const info = transport.probe();
    if (info.deviceId !== DeviceId.CONSOLE) {
      transport.fail();
      throw new ConsoleDeviceFault(
        "console-not-console",
        `DeviceID is ${info.deviceId}`,
        info.deviceId,
      );
    }
    let wanted = CONSOLE_DRIVER_FEATURES;
    if (options.multiport === false) wanted &= ~featureMask(ConsoleFeature.MULTIPORT);
    if (options.packed === false) wanted &= ~featureMask(Feature.RING_PACKED);
    const f = transport.negotiate(wanted);
    this.#features = f;
    this.#multiport = hasFeature(f, ConsoleFeature.MULTIPORT);
    const cfg = transport.readConfig((c) => ({
      cols: c.u16(ConsoleConfig.COLS),
      rows: c.u16(ConsoleConfig.ROWS),
      maxNrPorts: this.#multiport ? c.u32(ConsoleConfig.MAX_NR_PORTS) : 1,
    }));
    if (cfg.maxNrPorts < 1) {
      transport.fail();
      throw new ConsoleDeviceFault("console-bad-config", "max_nr_ports is 0", cfg.maxNrPorts);
    }
    this.#nPorts = this.#multiport ? Math.min(cfg.maxNrPorts, maxPortsOpt) : 1;
    this.#rxBuffers = rxBuffers;

    const max = transport.queueMaxSize(0);
    const size = checkQueueSizeOption("options.queueSize", options.queueSize ?? Math.min(64, max));
    const area = ringAreaBytes(size);
    const nQueues = this.#multiport ? 2 * (this.#nPorts + 1) : 2;
    checkRingPlacement(
      memory,
      allocator,
      options.ringBase,
      nQueues * area,
      `${nQueues} queues × ringAreaBytes(${size})`,
    );
    for (let i = 0; i < nQueues; i++) {
      this.#queues[i] = transport.setupQueue<Buf>(
        i,
        memory,
        ringLayoutAt(options.ringBase + i * area, size),
      );
      this.#dirty[i] = false;
    }
    for (let p = 0; p < this.#nPorts; p++) {
      this.#ports.push({
        added: false,
        name: undefined,
        console: false,
        guestOpen: false,
        hostOpen: false,
        size: undefined,
        rxPosted: false,
      });
    }
    transport.driverOk();

    const p0 = this.#ports[0]!;
    if (hasFeature(f, ConsoleFeature.SIZE)) p0.size = { cols: cfg.cols, rows: cfg.rows };
    if (this.#multiport) {
      // Control receive buffers first, so the device's answers have somewhere to go.
      for (let i = 0; i < rxBuffers; i++) this.#postRx(KIND_CTRL_RX, -1, CTRL_RX);
      // §5.3.6.2.2: the driver MUST send DEVICE_READY when MULTIPORT is negotiated.
      this.#sendControl(0, ConsoleEvent.DEVICE_READY, 1);
    } else {
      // Without MULTIPORT port 0 exists, is a console and is open (§5.3.6).
      p0.added = true;
      p0.console = true;
      p0.guestOpen = true;
      p0.hostOpen = true;
      this.#fillRx(0);
    }
    this.#kickAll();
  }

  /** The negotiated features. */
  get features(): bigint {
    return this.#features;
  }

  /** Whether MULTIPORT was negotiated. */
  get multiport(): boolean {
    return this.#multiport;
  }

  /**
   * The console size of port 0 (`cols`, `rows`): from the configuration with SIZE, updated by
   * configuration changes and RESIZE; undefined if never reported.
   */
  get size(): ConsoleSize | undefined {
    return this.#ports[0]?.size;
  }

  /** Writes submitted and not yet completed (including waiting ones). */
  get pendingWrites(): number {
    return this.#writes.length + this.#live.size;
  }

  /** The ports the device added (port 0 always without MULTIPORT). */
  ports(): ConsolePortInfo[] {
    const out: ConsolePortInfo[] = [];
    for (let i = 0; i < this.#ports.length; i++) {
      const p = this.#ports[i]!;
      if (!p.added) continue;
      out.push({
        id: i,
        name: p.name,
        console: p.console,
        guestOpen: p.guestOpen,
        hostOpen: p.hostOpen,
        size: p.size,
      });
    }
    return out;
  }

  /**
   * The port named `name` (PORT_NAME), if the device added one.
   * @param name - the port name
   */
  portByName(name: string): ConsolePortInfo | undefined {
    return this.ports().find((p) => p.name === name);
  }

  /**
   * Call `listener` with every chunk of bytes received, and its port. The bytes are a copy the
   * listener may keep.
   * @param listener - receives `(data, port)`
   * @returns a function that removes the listener
   */
  onReceive(listener: (data: Uint8Array, port: number) => void): () => void {
    this.#rxListeners.add(listener);
    return () => this.#rxListeners.delete(listener);
  }

  /**
   * Call `listener` with every port event (add, remove, host open/close, console, name, resize).
   * @param listener - receives the event
   * @returns a function that removes the listener
   */
  onPortEvent(listener: (e: ConsolePortEvent) => void): () => void {
    this.#evListeners.add(listener);
    return () => this.#evListeners.delete(listener);
  }

  /**
   * Open the guest side of a port (MULTIPORT): send PORT_OPEN 1 (§5.3.6.2). Input for a port is
   * only delivered by devices once it is open.
   * @param port - an added port
   * @throws RangeError naming `port` if the device did not add it
   */
  openPort(port: number): void {
    this.#setOpen(port, true);
  }

  /**
   * Close the guest side of a port (MULTIPORT): send PORT_OPEN 0.
   * @param port - an added port
   * @throws RangeError naming `port` if the device did not add it
   */
  closePort(port: number): void {
    this.#setOpen(port, false);
  }

  /**
   * Write `data` to `port`. The bytes are copied into transmit buffers when submitted; the
   * promise resolves when the device has used all of them.
   * @param data - bytes to send
   * @param port - port number (default 0)
   * @throws RangeError naming `port` if it is not an added port opened by the guest;
   *   ConsoleDeviceFault "console-ring-broken" (rejection)
   */
  write(data: Uint8Array, port = 0): Promise<void> {
    const p = Number.isInteger(port) ? this.#ports[port] : undefined;
    if (p === undefined || !p.added || !p.guestOpen) {
      throw new RangeError(`port must be an added, open port, got ${port}`);
    }
    if (this.#broken !== undefined) return Promise.reject(this.#broken);
    if (data.length === 0) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      this.#writes.push({ port, data, off: 0, chunks: 0, resolve, reject });
      this.#startWrites();
      this.#kickAll();
    });
  }

  /**
   * Emergency write (§5.3.4): one byte through `emerg_wr`, without any queue.
   * @param byte - the byte, 0 to 255
   * @returns false if VIRTIO_CONSOLE_F_EMERG_WRITE was not negotiated (nothing written)
   * @throws RangeError naming `byte`
   */
  emergencyWrite(byte: number): boolean {
    if (!Number.isInteger(byte) || byte < 0 || byte > 255) {
      throw new RangeError(`byte must be an integer in [0, 255], got ${byte}`);
    }
    if (!hasFeature(this.#features, ConsoleFeature.EMERG_WRITE)) return false;
    this.#t.writeConfig(ConsoleConfig.EMERG_WR, 4, byte);
    return true;
  }

  /**
   * Reap every used buffer of every queue: deliver input, handle control messages, complete
   * writes, refill receive buffers, submit waiting writes.
   * @returns the number of buffers reaped
   */
  poll(): number {
    if (this.#broken !== undefined) return 0;
    let done = 0;
    try {
      for (let i = 0; i < this.#queues.length; i++) {
        const q = this.#queues[i];
        if (q === undefined) continue;
        done += reapAll(q, this.#onUsed);
      }
    } catch (e) {
      // Never throw out of the driver's loop: fail what depends on the rings instead.
      if (!(e instanceof VirtioError)) throw e;
      this.#breakRing(e);
      return done;
    }
    this.#flushControl();
    this.#startWrites();
    this.#kickAll();
    return done;
  }

  /**
   * Interrupt handler: acknowledge InterruptStatus; on a configuration change re-read the size
   * of port 0 when SIZE was negotiated (§5.3.6 item 3); then {@link ConsoleDriver.poll}.
   * @returns the number of buffers reaped
   */
  onInterrupt(): number {
    const s = this.#t.takeInterrupt();
    if ((s & MmioInterrupt.CONFIG) !== 0 && hasFeature(this.#features, ConsoleFeature.SIZE)) {
      const size = this.#t.readConfig((c) => ({
        cols: c.u16(ConsoleConfig.COLS),
        rows: c.u16(ConsoleConfig.ROWS),
      }));
      const p0 = this.#ports[0]!;
      if (p0.size?.cols !== size.cols || p0.size?.rows !== size.rows) {
        p0.size = size;
        this.#emit({ kind: "resize", port: 0, cols: size.cols, rows: size.rows });
      }
    }
    return this.poll();
  }

  // ---- internals ----

  #setOpen(port: number, open: boolean): void {
    const p = Number.isInteger(port) ? this.#ports[port] : undefined;
    if (p === undefined || !p.added)
      throw new RangeError(`port must be an added port, got ${port}`);
    if (!this.#multiport || p.guestOpen === open) {
      p.guestOpen = this.#multiport ? open : true;
      return;
    }
    p.guestOpen = open;
    this.#sendControl(port, ConsoleEvent.PORT_OPEN, open ? 1 : 0);
    this.#kickAll();
  }

  #emit(e: ConsolePortEvent): void {
    for (const l of this.#evListeners) l(e);
  }

  #fault(code: ConsoleDeviceFaultCode, message: string, value: number): void {
    this.stats.faults++;
    this.lastFault = new ConsoleDeviceFault(code, message, value);
  }

  /** Post one receive buffer on queue `qi`. @returns false if no slot or ring room */
  #postRx(kind: number, port: number, qi: number, reuse?: Buf): boolean {
    const q = this.#queues[qi];
    if (q === undefined) return false;
    let b = reuse;
    if (b === undefined) {
      const addr = this.#slab.alloc();
      if (addr === undefined) return false;
      b = { kind, port, addr, len: this.#slab.slotSize, write: undefined };
    }
    const seg = this.#ro[0] as { addr: number; len: number };
    seg.addr = b.addr;
    seg.len = b.len;
    // §5.3.6.1: receive buffers are device-writable only.
    if (!q.add(this.#none, this.#ro, b)) {
      this.#slab.free(b.addr);
      return false;
    }
    this.#dirty[qi] = true;
    return true;
  }

  #fillRx(port: number): void {
    const p = this.#ports[port]!;
    if (p.rxPosted) return;
    p.rxPosted = true;
    for (let i = 0; i < this.#rxBuffers; i++) this.#postRx(KIND_RX, port, rxq(port));
  }

  #sendControl(id: number, event: number, value: number): void {
    const m = new Uint8Array(ConsoleControl.SIZE);
    const v = new DataView(m.buffer);
    v.setUint32(ConsoleControl.ID, id, true);
    v.setUint16(ConsoleControl.EVENT, event, true);
    v.setUint16(ConsoleControl.VALUE, value, true);
    this.#ctrlOut.push(m);
    this.#flushControl();
  }

  #flushControl(): void {
    const q = this.#queues[CTRL_TX];
    if (q === undefined || this.#broken !== undefined) return;
    while (this.#ctrlOut.length > 0) {
      const addr = this.#slab.alloc();
      if (addr === undefined) return;
      const m = this.#ctrlOut[0]!;
      this.#mem.write(addr, m);
      const b: Buf = { kind: KIND_CTRL_TX, port: -1, addr, len: m.length, write: undefined };
      const seg = this.#ro[0] as { addr: number; len: number };
      seg.addr = addr;
      seg.len = m.length;
      if (!q.add(this.#ro, this.#none, b)) {
        this.#slab.free(addr);
        return;
      }
      this.#ctrlOut.shift();
      this.#dirty[CTRL_TX] = true;
    }
  }

  #startWrites(): void {
    const w = this.#writes;
    const slotSize = this.#slab.slotSize;
    while (w.length > 0 && this.#broken === undefined) {
      const req = w[0]!;
      const qi = rxq(req.port) + 1;
      const q = this.#queues[qi]!;
      while (req.off < req.data.length) {
        const addr = this.#slab.alloc();
        if (addr === undefined) return;
        const n = Math.min(slotSize, req.data.length - req.off);
        this.#mem.write(addr, req.data.subarray(req.off, req.off + n));
        const b: Buf = { kind: KIND_TX, port: req.port, addr, len: n, write: req };
        const seg = this.#ro[0] as { addr: number; len: number };
        seg.addr = addr;
        seg.len = n;
        // §5.3.6.1: transmit buffers are device-readable only.
        if (!q.add(this.#ro, this.#none, b)) {
          this.#slab.free(addr);
          return;
        }
        this.#dirty[qi] = true;
        req.off += n;
        req.chunks++;
      }
      w.shift();
      this.#live.add(req);
    }
  }

  #kickAll(): void {
    for (let i = 0; i < this.#queues.length; i++) {
      if (!this.#dirty[i]) continue;
      this.#dirty[i] = false;
      if (this.#queues[i]!.publish()) this.#t.notify(i);
    }
  }

  #complete(b: Buf, len: number): void {
    switch (b.kind) {
      case KIND_TX: {
        this.#slab.free(b.addr);
        this.stats.txBytes += b.len;
        const req = b.write!;
        if (--req.chunks === 0 && req.off === req.data.length && this.#live.delete(req)) {
          req.resolve();
        }
        return;
      }
      case KIND_CTRL_TX:
        this.#slab.free(b.addr);
        return;
      // A used length above b.len never gets here: the driver queue raises
      // UsedLenTooLargeError (a RingError) for it, which breaks the ring in poll().
      case KIND_RX:
        this.#received(b, len);
        break;
      default:
        this.#controlIn(len, b.addr);
        break;
    }
    // Refill: the same buffer goes back to its receive queue.
    const qi = b.kind === KIND_RX ? rxq(b.port) : CTRL_RX;
    const p = b.kind === KIND_RX ? this.#ports[b.port] : undefined;
    if (p !== undefined && !p.added) {
      // The port was removed: its buffers are retired, not reposted.
      this.#slab.free(b.addr);
      return;
    }
    this.#postRx(b.kind, b.port, qi, b);
  }

  #received(b: Buf, len: number): void {
    if (len === 0) return;
    const data = new Uint8Array(len);
    this.#mem.read(b.addr, data);
    if (this.#rxListeners.size === 0) {
      this.stats.rxUnheard += len;
      return;
    }
    this.stats.rxBytes += len;
    for (const l of this.#rxListeners) l(data, b.port);
  }

  #controlIn(len: number, addr: number): void {
    this.stats.controlIn++;
    if (len < ConsoleControl.SIZE) {
      this.#fault("console-bad-control", `control message of ${len} bytes`, len);
      return;
    }
    // Copy once; parse the copy (the buffer is ours, but the device wrote it).
    const n = Math.min(len, this.#ctrl.length);
    const m = this.#ctrl.subarray(0, n);
    this.#mem.read(addr, m);
    const id = (m[0]! | (m[1]! << 8) | (m[2]! << 16) | (m[3]! << 24)) >>> 0;
    const event = m[4]! | (m[5]! << 8);
    const value = m[6]! | (m[7]! << 8);
    if (event === ConsoleEvent.DEVICE_ADD && id >= this.#ports.length && id <= 0xffff) {
      // A port beyond what this driver set up: refuse it (§5.3.6.2 PORT_READY value 0).
      this.#sendControl(id, ConsoleEvent.PORT_READY, 0);
      return;
    }
    const p = this.#ports[id];
    if (p === undefined) {
      this.#fault("console-bad-control", `control message for unknown port ${id}`, id);
      return;
    }
    switch (event) {
      case ConsoleEvent.DEVICE_ADD:
        if (p.added) {
          // §5.3.6.2.1: the device MUST NOT add a port that exists.
          this.#fault("console-bad-control", `port ${id} added twice`, id);
          return;
        }
        p.added = true;
        p.rxPosted = false;
        this.#fillRx(id);
        this.#sendControl(id, ConsoleEvent.PORT_READY, 1);
        this.#emit({ kind: "add", port: id });
        return;
      case ConsoleEvent.DEVICE_REMOVE:
        if (!p.added) {
          this.#fault("console-bad-control", `port ${id} removed but not added`, id);
          return;
        }
        p.added = false;
        p.guestOpen = false;
        p.hostOpen = false;
        p.console = false;
        p.name = undefined;
        this.#emit({ kind: "remove", port: id });
        return;
      default:
        break;
    }
    if (!p.added) {
      this.#fault("console-bad-control", `event ${event} for port ${id} not added`, id);
      return;
    }
    switch (event) {
      case ConsoleEvent.CONSOLE_PORT:
        p.console = true;
        this.#emit({ kind: "console", port: id });
        // §5.3.6.2.2: the driver MUST respond with PORT_OPEN, value 1.
        if (!p.guestOpen) {
          p.guestOpen = true;
          this.#sendControl(id, ConsoleEvent.PORT_OPEN, 1);
        }
        return;
      case ConsoleEvent.PORT_OPEN:
        p.hostOpen = value !== 0;
        this.#emit({ kind: "host-open", port: id, open: p.hostOpen });
        return;
      case ConsoleEvent.PORT_NAME: {
        // §5.3.6.2: the UTF-8 name follows the header, without a NUL terminator.
        const name = decodeUtf8(m.subarray(ConsoleControl.SIZE));
        p.name = name;
        this.#emit({ kind: "name", port: id, name });
        return;
      }
      case ConsoleEvent.RESIZE: {
        if (n < ConsoleControl.SIZE + ConsoleResize.SIZE) {
          this.#fault("console-bad-control", `RESIZE of ${len} bytes`, len);
          return;
        }
        const at = ConsoleControl.SIZE;
        const cols = m[at + ConsoleResize.COLS]! | (m[at + ConsoleResize.COLS + 1]! << 8);
        const rows = m[at + ConsoleResize.ROWS]! | (m[at + ConsoleResize.ROWS + 1]! << 8);
        p.size = { cols, rows };
        this.#emit({ kind: "resize", port: id, cols, rows });
        return;
      }
      default:
        this.#fault("console-bad-control", `unexpected event ${event}`, event);
    }
  }

  #breakRing(cause: VirtioError): void {
    const fault = new ConsoleDeviceFault(
      "console-ring-broken",
      `the device broke a ring: ${cause.message}`,
      0,
      cause,
    );
    this.#broken = fault;
    this.lastFault = fault;
    // Writes on the ring cannot be found from here (tokens are opaque); reject waiting ones and
    // settle in-flight ones through their requests.
    const victims = new Set<WriteReq>(this.#writes);
    this.#writes.length = 0;
    for (const r of this.#live) victims.add(r);
    this.#live.clear();
    for (const r of victims) r.reject(fault);
  }
}
