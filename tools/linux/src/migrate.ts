// Moving the running Linux guest to another process: the source's `LinuxGuest.migrate()`
// gives a snapshot (v86 + our devices); it travels over a socket with the disk image to a
// destination that started early (emulator loaded, fresh devices attached, waiting), which
// writes the image into its disk, restores and lets the guest go on.
//
//   node tools/linux/dist/migrate-target.js SOCKET DISK   (prints "listening", then a report)
import { closeSync, fsyncSync, openSync, writeSync } from "node:fs";
import { createServer, type Socket } from "node:net";
import { decodeDeviceState } from "@virtio-ts/transport";
import { decodeV86Snapshot, type V86Snapshot } from "@virtio-ts/v86";
import { type LinuxResult, startLinux } from "./guest.js";

/** What travels from the source to the destination. */
export interface MigrationMessage {
  /** The source's facts, as JSON: when it suspended, what to type after the resume. */
  readonly meta: MigrationMeta;
  /** `encodeV86Snapshot` bytes. */
  readonly snapshot: Uint8Array;
  /** The disk image, flushed at the source after the suspend. */
  readonly disk: Uint8Array;
}

/** The JSON part of a {@link MigrationMessage}. */
export interface MigrationMeta {
  /** `Date.now()` when the source began to suspend (the downtime starts). */
  readonly suspendedAt: number;
  /** Text the destination writes to the guest's /dev/hvc0 once it runs again. */
  readonly consoleInput?: string;
}

/** The most a destination accepts in one message (the guest's RAM state plus its disk). */
const MAX_MESSAGE = 1 << 30;

/**
 * Send a migration over `socket`: three parts (meta JSON, snapshot, disk), each a u32 LE
 * length and the bytes; then the socket is ended.
 */
export function writeMigration(socket: Socket, m: MigrationMessage): Promise<void> {
  return new Promise((resolve, reject) => {
    socket.once("error", reject);
    for (const part of [new TextEncoder().encode(JSON.stringify(m.meta)), m.snapshot, m.disk]) {
      const len = Buffer.alloc(4);
      len.writeUInt32LE(part.length);
      socket.write(len);
      socket.write(part);
    }
    socket.end(() => resolve());
  });
}

/**
 * Read one migration from `socket` (until the sender ends it). The bytes are untrusted: a
 * message over 1 GiB or with parts past its end is refused.
 * @throws Error naming what is wrong with the framing
 */
export async function readMigration(socket: Socket): Promise<MigrationMessage> {
  const chunks: Buffer[] = [];
  let total = 0;
  for await (const c of socket) {
    total += (c as Buffer).length;
    if (total > MAX_MESSAGE) throw new Error(`migration message over ${MAX_MESSAGE} bytes`);
    chunks.push(c as Buffer);
  }
  const all = Buffer.concat(chunks);
  const parts: Uint8Array[] = [];
  let at = 0;
  for (let i = 0; i < 3; i++) {
    if (at + 4 > all.length) throw new Error(`migration message: part ${i} missing`);
    const n = all.readUInt32LE(at);
    if (n > all.length - at - 4) throw new Error(`migration message: part ${i} past the end`);
    parts.push(new Uint8Array(all.buffer, all.byteOffset + at + 4, n));
    at += 4 + n;
  }
  const meta = JSON.parse(new TextDecoder().decode(parts[0])) as MigrationMeta;
  if (typeof meta?.suspendedAt !== "number") throw new Error("migration message: no suspendedAt");
  return { meta, snapshot: parts[1]!, disk: parts[2]! };
}

/** What a destination reports (its last stdout line, after "destination "). */
export interface MigrationTargetReport {
  /** The guest's run at the destination (the serial log dropped to keep it short). */
  readonly result: Omit<LinuxResult, "serial">;
  /** Lines the guest wrote to /dev/hvc0 at the destination. */
  readonly console: readonly string[];
  /** Milliseconds from the source's suspend to the destination's guest running again. */
  readonly downtimeMs: number;
  /** Milliseconds the destination took from the message's arrival to the guest running. */
  readonly restoreMs: number;
  /** Bytes received: the snapshot blob, v86's part, each device's state, the disk. */
  readonly bytes: {
    readonly snapshot: number;
    readonly machine: number;
    readonly devices: readonly { slot: number; deviceId: number; bytes: number }[];
    readonly disk: number;
  };
  /** Chains in flight in each device's state at the suspend (served again here). */
  readonly inFlight: readonly number[];
}

/**
 * The destination: start a guest run that waits for a snapshot (emulator loaded, the standard
 * devices attached over `disk`, which must already have the source image's size), listen on
 * `socketPath`, take one migration, write the image into `disk`, resume, type
 * `meta.consoleInput`, and resolve with the report when the guest's run ends.
 * @param socketPath - unix socket to listen on
 * @param disk - the destination's disk image path
 * @param onListening - called once the socket listens
 */
export async function runMigrationTarget(
  socketPath: string,
  disk: string,
  onListening: () => void = () => {},
): Promise<MigrationTargetReport> {
  let give: (s: V86Snapshot) => void = () => {};
  const snapshot = new Promise<V86Snapshot>((resolve) => {
    give = resolve;
  });
  const hvc: string[] = [];
  const guest = await startLinux({
    disk,
    resumeFrom: snapshot,
    timeoutSeconds: 420,
    onConsoleLine: (line) => hvc.push(line),
  });
  const server = createServer();
  const arrived = new Promise<MigrationMessage>((resolve, reject) => {
    server.once("connection", (socket) => {
      server.close();
      readMigration(socket).then(resolve, reject);
    });
    server.once("error", reject);
  });
  server.listen(socketPath, onListening);
  const m = await arrived;
  const tArrived = Date.now();
  // The image into the disk the BlkDevice has open (same inode, written through, fsynced).
  const fd = openSync(disk, "r+");
  try {
    writeSync(fd, m.disk, 0, m.disk.length, 0);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  const snap = decodeV86Snapshot(m.snapshot);
  give(snap);
  await guest.resumed;
  const tResumed = Date.now();
  if (m.meta.consoleInput !== undefined) guest.sendConsole(m.meta.consoleInput);
  const { serial: _serial, ...result } = await guest.result;
  return {
    result,
    console: hvc,
    downtimeMs: tResumed - m.meta.suspendedAt,
    restoreMs: tResumed - tArrived,
    bytes: {
      snapshot: m.snapshot.length,
      machine: snap.machine.length,
      devices: snap.devices.map((d) => ({
        slot: d.slot,
        deviceId: d.deviceId,
        bytes: d.state.length,
      })),
      disk: m.disk.length,
    },
    inFlight: snap.devices.map((d) =>
      decodeDeviceState(d.state).queues.reduce((n, q) => n + q.inFlight.length, 0),
    ),
  };
}
