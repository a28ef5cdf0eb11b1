import { type NetBackend, NetDevice } from "@virtio-ts/devices";
import { NetDriver, SlabAllocator } from "@virtio-ts/drivers";
import { createGuestMemory, type GuestMemory } from "@virtio-ts/memory";
import { MmioDevice, MmioDriverTransport } from "@virtio-ts/transport";

/** Options of {@link createTsNic}. */
export interface TsNicOptions {
  /** The NIC's MAC address (config `mac`). Default 52:54:00:00:00:02. */
  readonly mac?: Uint8Array;
  /**
   * Called with every frame the driver receives, in order, after an interrupt was handled;
   * the frame is the caller's to keep. Send replies from here with `nic.driver.trySend`.
   */
  readonly onFrame?: (frame: Uint8Array, nic: TsNic) => void;
}

/** An in-process virtio-net NIC: {@link NetDriver} ↔ virtio-mmio ↔ {@link NetDevice} ↔ back-end. */
export interface TsNic {
  /** The guest side. */
  readonly driver: NetDriver;
  /** The device model. */
  readonly model: NetDevice;
  /** The virtio-mmio register file between them. */
  readonly device: MmioDevice;
  /** The guest memory both sides share (8 MiB). */
  readonly memory: GuestMemory;
  /** Stop handling interrupts and detach from the back-end. */
  close(): void;
}

/**
 * A "TS guest": our {@link NetDriver} driving our {@link NetDevice} through a virtio-mmio
 * register file in the same process, the device's back-end being `backend` (a switch port, a
 * tunnel, a sniffer around either). The device's interrupt line schedules the driver's
 * interrupt handler on the next macrotask (coalesced), as a real interrupt would arrive after
 * the device returned; received frames then go to `onFrame`.
 *
 * Memory layout (8 MiB): rings at 0x10000, 512 buffer slots of 2 KiB at 0x100000; queues of 64.
 *
 * @param backend - the network
 * @param options - MAC and the receive callback
 * @returns the NIC, link up and receive buffers posted
 * @throws whatever NetDriver's initialisation throws (NetDeviceFault, TransportError)
 */
/** The next turn of the event loop: Node's setImmediate, or a timer in a browser page. */
const later: (fn: () => void) => void =
  typeof globalThis.setImmediate === "function"
    ? (fn) => setImmediate(fn)
    : (fn) => setTimeout(fn, 0);

export function createTsNic(backend: NetBackend, options: TsNicOptions = {}): TsNic {
  const memory = createGuestMemory({ size: 0x80_0000 });
  const model = new NetDevice(backend, {
    mac: options.mac ?? new Uint8Array([0x52, 0x54, 0, 0, 0, 2]),
    queueSize: 64,
    ctrlQueueSize: 16,
  });
  let driver: NetDriver | undefined;
  let scheduled = false;
  let closed = false;
  const handle = (): void => {
    scheduled = false;
    if (closed || driver === undefined) return;
    driver.onInterrupt();
    const onFrame = options.onFrame;
    for (let f = driver.tryReceive(); f !== undefined; f = driver.tryReceive()) {
      onFrame?.(f, nic);
    }
  };
  const device = new MmioDevice(model, {
    memory,
    interrupt: () => {
      if (!scheduled) {
        scheduled = true;
        later(handle);
      }
    },
  });
  const transport = new MmioDriverTransport({
    read: (off, size) => device.read(off, size),
    write: (off, size, v) => device.write(off, size, v),
  });
  driver = new NetDriver(transport, memory, new SlabAllocator(0x10_0000, 2048, 512), {
    ringBase: 0x1_0000,
    queueSize: 64,
  });
  const nic: TsNic = {
    driver,
    model,
    device,
    memory,
    close(): void {
      closed = true;
      backend.detach();
    },
  };
  return nic;
}
