import { type NetBackend, NetDevice } from "@virtio-ts/devices";
import { NetDriver, SlabAllocator } from "@virtio-ts/drivers";
import { createGuestMemory, type GuestMemory } from "@virtio-ts/memory";
import { InThreadMmio, type MmioDevice } from "@virtio-ts/transport";

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
export function createTsNic(backend: NetBackend, options: TsNicOptions = {}): TsNic {
  const memory = createGuestMemory({ size: 0x80_0000 });
  const model = new NetDevice(backend, {
    mac: options.mac ?? new Uint8Array([0x52, 0x54, 0, 0, 0, 2]),
    queueSize: 64,
    ctrlQueueSize: 16,
  });
  const vm = new InThreadMmio(model, { memory });
  const device = vm.device;
  let closed = false;
  const driver = new NetDriver(vm.transport, memory, new SlabAllocator(0x10_0000, 2048, 512), {
    ringBase: 0x1_0000,
    queueSize: 64,
  });
  vm.line.handler = () => {
    if (closed) return;
    driver.onInterrupt();
    const onFrame = options.onFrame;
    for (let f = driver.tryReceive(); f !== undefined; f = driver.tryReceive()) {
      onFrame?.(f, nic);
    }
  };
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
