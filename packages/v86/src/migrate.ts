/**
 * Moving a running v86 machine with its virtio-ts devices — "suspend the VM, store its encoded
 * state, copy it to the target server, resume" — in another process or on another machine.
 *
 * A {@link V86Snapshot} has two parts: v86's own `save_state` (CPU, guest RAM, v86's devices:
 * PIC, IOAPIC, LAPIC, PIT, RTC, UARTs, DMA, the PCI configuration space of every function,
 * ours included) and one virtio-ts device state per attached function (`savePciDevice`: the
 * core with its queues and chains in flight, the model's own state, the function's registers).
 * What neither holds is the back-ends: the caller moves those (see {@link saveV86}).
 * @module
 */
import {
  crc32,
  type DeviceState,
  DeviceStateChecksumError,
  DeviceStateFormatError,
  DeviceStateMismatchError,
  decodeDeviceState,
  savePciDevice,
} from "@virtio-ts/transport";
import { V86VirtioBus } from "./bus.js";
import type { V86Emulator } from "./internals.js";

/** One attached function in a {@link V86Snapshot}. */
export interface V86DeviceSnapshot {
  /** Its PCI slot on bus 0 (the destination attaches the same model type there). */
  readonly slot: number;
  /** Its virtio device ID (§5). */
  readonly deviceId: number;
  /** `savePciDevice` bytes: versioned, CRC-32 checked. */
  readonly state: Uint8Array;
}

/**
 * A suspended v86 machine with its virtio-ts devices.
 *
 * Field writers: {@link saveV86} (or {@link decodeV86Snapshot}); at the destination every
 * field is untrusted until {@link restoreV86} has checked it against the fresh emulator.
 */
export interface V86Snapshot {
  /** v86's `save_state` bytes: CPU, guest RAM (zero pages left out), v86's own devices. */
  readonly machine: Uint8Array;
  /** Our functions, in attach order. */
  readonly devices: readonly V86DeviceSnapshot[];
}

/** Options of {@link saveV86}. */
export interface SaveV86Options {
  /**
   * How long to wait at most for the devices' back-ends to finish the requests they hold
   * before the state is taken (default 0: whatever is in flight is saved and served again at
   * the destination).
   */
  readonly drainTimeoutMs?: number;
}

/** Options of {@link restoreV86}. */
export interface RestoreV86Options {
  /** Start the emulator after the restore (default true). */
  readonly run?: boolean;
}

/**
 * Suspend the machine and capture it: v86 stops (no guest instruction runs from here on),
 * every attached device is suspended (`core.suspend`: its queues gated, kicks held,
 * `drainTimeoutMs` for the back-ends), then — in one synchronous step, so no back-end
 * completion can fall between them — every device's state and v86's `save_state` are taken
 * and the devices abandoned (`core.abandon`: what their back-ends finish late is dropped, not
 * completed twice). Resolves once the devices' back-ends are idle.
 *
 * What the caller moves besides the snapshot (v86 and these devices do not hold it):
 * - the disk behind a `BlkDevice`: after this resolves nothing writes to it any more; flush it
 *   (`FileDisk.flush`: fsync) and copy the image to the destination, or share it (the same
 *   file on shared storage, an NBD export). Requests that were in flight are served again at
 *   the destination, so a write the source finished late is simply written twice, with the
 *   same data;
 * - the network behind a `NetDevice`: the destination's model gets its own port on the
 *   destination's switch (the guest keeps its MAC; peers learn its new port from its next
 *   frame; frames sent to it during the move are lost, as on a real link);
 * - the console's and entropy source's back-ends are the destination's own.
 *
 * The source emulator must not run again: destroy it. (To cancel before the devices are
 * abandoned, there is nothing to undo but `core.resume()` and `emulator.run()`, which is what
 * a failure here does.)
 *
 * @example
 * ```ts
 * const snapshot = await saveV86(emulator);      // the guest is stopped from here on
 * await disk.flush();
 * send(encodeV86Snapshot(snapshot), await readFile(imagePath));
 * await emulator.destroy();
 * ```
 * @param emulator - a loaded `V86` whose devices were attached with `V86VirtioBus.attach`
 * @param options - drain bound
 * @returns v86's state and each device's state
 * @throws RangeError naming `options.drainTimeoutMs`; PackedOvercommitError (a hostile
 *   driver overcommitted a packed ring, see `VirtioDeviceCore.saveState`) — on any failure the
 *   devices and v86 run again
 */
export async function saveV86(
  emulator: V86Emulator,
  options: SaveV86Options = {},
): Promise<V86Snapshot> {
  const bus = V86VirtioBus.of(emulator);
  const cores = bus.devices.map((d) => d.pci.core);
  const goOn = (): void => {
    for (const c of cores) c.resume();
    void emulator.run();
  };
  await emulator.stop();
  try {
    const drain = { drainTimeoutMs: options.drainTimeoutMs ?? 0 };
    await Promise.all(cores.map((c) => c.suspend(drain)));
  } catch (e) {
    goOn();
    throw e;
  }
  // One synchronous step: device states, v86's state, abandon. Back-end completions run as
  // later tasks, so none can change guest RAM or a ring between the two captures.
  let devices: V86DeviceSnapshot[];
  let machine: ArrayBuffer | Promise<ArrayBuffer>;
  try {
    bus.enter();
    devices = bus.devices.map((d) => ({
      slot: d.slot,
      deviceId: d.model.deviceId,
      state: savePciDevice(d.pci),
    }));
    // v86's machine object snapshots synchronously; the public method wraps it in a promise
    // (and in 0.5.x also runs it before returning).
    const m = emulator.v86;
    machine = m?.save_state !== undefined ? m.save_state() : emulator.save_state();
  } catch (e) {
    goOn();
    throw e;
  }
  const abandoned = cores.map((c) => c.abandon());
  const bytes = new Uint8Array(await machine);
  await Promise.all(abandoned);
  return { machine: bytes, devices };
}

/**
 * Resume a machine from a {@link V86Snapshot} in a fresh emulator: created with the same
 * options as the source (memory size, BIOS, the same v86 devices), loaded, not run yet, with
 * fresh models of the same types attached at the same slots in the same order (same attach
 * options), over the moved back-ends. Everything the bytes say is checked against that before
 * v86 is touched (device list, each state's framing and checksum); then v86's state is
 * restored (CPU, RAM, PIC and the PCI configuration spaces), then each device
 * (`VirtioPciDevice.restoreState`: its I/O ports are mapped where the guest had put them, a
 * pending INTx is raised again on the restored PIC, the chains in flight are served first),
 * then the emulator runs.
 *
 * @example
 * ```ts
 * const emulator = new V86({ ...sameOptions, autostart: false });
 * emulator.add_listener("emulator-loaded", async () => {
 *   const bus = V86VirtioBus.of(emulator);
 *   bus.attach(new BlkDevice(await FileDisk.open(copiedImage)));  // same order as the source
 *   bus.attach(new NetDevice(mySwitch.createPort()));
 *   await restoreV86(emulator, decodeV86Snapshot(bytes));
 * });
 * ```
 * @param emulator - the destination, loaded, its functions attached and never configured
 * @param snapshot - from {@link saveV86} or {@link decodeV86Snapshot} (untrusted)
 * @param options - whether to run afterwards
 * @throws DeviceStateMismatchError naming the device whose slot or type differs (`devices`,
 *   `devices[i].slot`, `devices[i].deviceId`) or, from a device's restore, the field that
 *   does not fit; DeviceStateError for a device state that does not decode; RangeError when a
 *   function was already configured (the emulator ran); what v86's `restore_state` throws. A
 *   failure after v86's state was restored leaves the emulator unusable: destroy it.
 */
export async function restoreV86(
  emulator: V86Emulator,
  snapshot: V86Snapshot,
  options: RestoreV86Options = {},
): Promise<void> {
  const bus = V86VirtioBus.of(emulator);
  const devs = bus.devices;
  if (snapshot.devices.length !== devs.length) {
    throw new DeviceStateMismatchError(
      "devices",
      `saved ${snapshot.devices.length} functions, ${devs.length} attached here`,
    );
  }
  const states: DeviceState[] = snapshot.devices.map((s, i) => {
    const d = devs[i]!;
    if (s.slot !== d.slot) {
      throw new DeviceStateMismatchError(
        `devices[${i}].slot`,
        `saved slot ${s.slot}, attached at ${d.slot}`,
      );
    }
    if (s.deviceId !== d.model.deviceId) {
      throw new DeviceStateMismatchError(
        `devices[${i}].deviceId`,
        `saved device ${s.deviceId}, attached ${d.model.deviceId}`,
      );
    }
    return decodeDeviceState(s.state);
  });
  for (const d of devs) {
    if (d.pci.command !== 0 || d.pci.core.status !== 0) {
      throw new RangeError(
        `the function at slot ${d.slot} was configured already: restore into an emulator that never ran`,
      );
    }
  }
  await emulator.stop();
  const m = snapshot.machine;
  const whole = m.byteOffset === 0 && m.byteLength === m.buffer.byteLength;
  await emulator.restore_state(
    (whole ? m.buffer : m.buffer.slice(m.byteOffset, m.byteOffset + m.byteLength)) as ArrayBuffer,
  );
  bus.enter();
  devs.forEach((d, i) => {
    d.pci.restoreState(states[i]!);
    d.v86Space?.set(d.pci.configSpace.subarray(0, d.v86Space.length));
  });
  if (options.run ?? true) await emulator.run();
}

// ---- encoding ----
//
// All little-endian.
//   header   "VT86" magic u32, version u16, device count u16, machine length u32, reserved u32
//   devices  per device: slot u8, reserved u8, device ID u16, length u32, the state bytes
//   machine  v86's save_state bytes
//   trailer  CRC-32 of everything before it, u32

const MAGIC = 0x36385456; // "VT86"
/** The format version {@link encodeV86Snapshot} writes and {@link decodeV86Snapshot} reads. */
export const V86_SNAPSHOT_VERSION = 1;
const HEADER = 16;
const DEVICE_HEADER = 8;
const MAX_DEVICES = 32;

/**
 * One blob for a {@link V86Snapshot}: both parts, framed, with a CRC-32 over all of it (the
 * guest's RAM included: a damaged copy is refused, not resumed).
 * @param snapshot - from {@link saveV86}
 * @returns the bytes
 * @throws RangeError naming a field that does not fit the format
 */
export function encodeV86Snapshot(snapshot: V86Snapshot): Uint8Array {
  const { machine, devices } = snapshot;
  if (devices.length > MAX_DEVICES) {
    throw new RangeError(`snapshot.devices holds ${devices.length} functions, at most 32`);
  }
  if (machine.length > 0xffffffff) {
    throw new RangeError("snapshot.machine must be shorter than 4 GiB");
  }
  let len = HEADER + machine.length + 4;
  devices.forEach((d, i) => {
    if (!Number.isInteger(d.slot) || d.slot < 0 || d.slot > 31) {
      throw new RangeError(`snapshot.devices[${i}].slot must be in [0, 31], got ${d.slot}`);
    }
    if (!Number.isInteger(d.deviceId) || d.deviceId < 0 || d.deviceId > 0xffff) {
      throw new RangeError(`snapshot.devices[${i}].deviceId must be a u16, got ${d.deviceId}`);
    }
    len += DEVICE_HEADER + d.state.length;
  });
  const out = new Uint8Array(len);
  const v = new DataView(out.buffer);
  v.setUint32(0, MAGIC, true);
  v.setUint16(4, V86_SNAPSHOT_VERSION, true);
  v.setUint16(6, devices.length, true);
  v.setUint32(8, machine.length, true);
  let at = HEADER;
  for (const d of devices) {
    v.setUint8(at, d.slot);
    v.setUint16(at + 2, d.deviceId, true);
    v.setUint32(at + 4, d.state.length, true);
    out.set(d.state, at + DEVICE_HEADER);
    at += DEVICE_HEADER + d.state.length;
  }
  out.set(machine, at);
  at += machine.length;
  v.setUint32(at, crc32(out.subarray(0, at)), true);
  return out;
}

/**
 * Decode bytes of {@link encodeV86Snapshot}. The bytes are untrusted: magic, version, the
 * framing of every part and the total length are checked, then the checksum. The device states
 * inside are decoded (and checked again) by {@link restoreV86}.
 * @param bytes - the blob
 * @returns the snapshot; its arrays are views into `bytes`
 * @throws DeviceStateFormatError (not a snapshot, another format version, truncated, bad
 *   framing), DeviceStateChecksumError — and nothing else, for any input
 */
export function decodeV86Snapshot(bytes: Uint8Array): V86Snapshot {
  if (!(bytes instanceof Uint8Array)) throw new DeviceStateFormatError("not a Uint8Array", 0);
  const bad = (why: string, at: number): never => {
    throw new DeviceStateFormatError(`v86 snapshot: ${why}`, at);
  };
  if (bytes.length < HEADER + 4) bad("shorter than a header", 0);
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (v.getUint32(0, true) !== MAGIC) bad("no VT86 magic", 0);
  const version = v.getUint16(4, true);
  if (version !== V86_SNAPSHOT_VERSION) {
    bad(`format version ${version} (this code reads ${V86_SNAPSHOT_VERSION})`, 4);
  }
  const count = v.getUint16(6, true);
  const machineLen = v.getUint32(8, true);
  if (count > MAX_DEVICES) bad(`${count} functions`, 6);
  if (v.getUint32(12, true) !== 0) bad("reserved bits set", 12);
  // The framing first (bounded: at most 32 functions), so a truncated blob says so.
  const end = bytes.length - 4;
  let at = HEADER;
  const devices: V86DeviceSnapshot[] = [];
  for (let i = 0; i < count; i++) {
    if (at + DEVICE_HEADER > end) bad(`truncated function ${i}`, at);
    const slot = v.getUint8(at);
    if (slot > 31 || v.getUint8(at + 1) !== 0) bad(`function ${i} slot ${slot}`, at);
    const deviceId = v.getUint16(at + 2, true);
    const n = v.getUint32(at + 4, true);
    at += DEVICE_HEADER;
    if (n > end - at) bad(`function ${i}: ${n} bytes of state past the end`, at - 4);
    devices.push({ slot, deviceId, state: bytes.subarray(at, at + n) });
    at += n;
  }
  if (end - at !== machineLen) {
    bad(`${end - at} bytes left for a machine state of ${machineLen}`, 8);
  }
  const expected = v.getUint32(end, true);
  const actual = crc32(bytes.subarray(0, end));
  if (expected !== actual) throw new DeviceStateChecksumError(expected, actual);
  return { machine: bytes.subarray(at, end), devices };
}
