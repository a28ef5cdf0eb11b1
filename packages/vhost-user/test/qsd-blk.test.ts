// Interop: our BlkDriver, over VhostUserDriverTransport, drives qemu-storage-daemon's
// vhost-user-blk export (a back-end nobody here wrote). Needs qemu-storage-daemon
// (Debian: qemu-system-common) and the native addon; fails, never skips, without them.
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, watch, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { BlkDriver, SlabAllocator } from "@virtio-ts/drivers";
import { BlkFeature, DeviceId, Feature, featureMask, hasFeature } from "@virtio-ts/spec";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { pattern as random } from "../../../test-support/pattern.js";
import {
  createSharedMemory,
  loadNative,
  type SharedGuestMemory,
  VhostUserDriverTransport,
} from "../src/index.js";

const SECTORS = 16384; // 8 MiB
const QSD = "qemu-storage-daemon";

function pattern(sector: number): Uint8Array {
  const b = new Uint8Array(512);
  for (let i = 0; i < 512; i++) b[i] = (sector * 31 + i * 7 + (sector >> 8)) & 0xff;
  new DataView(b.buffer).setUint32(0, sector, true);
  return b;
}

let dir: string;
let img: string;
let sock: string;
let daemon: ChildProcess | undefined;
let daemonLog = "";

async function startDaemon(): Promise<void> {
  const probe = spawnSync(QSD, ["--version"], { encoding: "utf8" });
  if (probe.error !== undefined || probe.status !== 0) {
    throw new Error(
      `${QSD} not found or not runnable (${probe.error?.message ?? probe.stderr}): install it (Debian: apt-get install qemu-system-common)`,
    );
  }
  const appeared = new Promise<void>((resolve, reject) => {
    const w = watch(dir, () => {
      if (existsSync(sock)) {
        w.close();
        resolve();
      }
    });
    daemon = spawn(QSD, [
      "--blockdev",
      `driver=file,node-name=file0,filename=${img}`,
      "--blockdev",
      "driver=raw,node-name=disk0,file=file0",
      "--export",
      `type=vhost-user-blk,id=exp0,node-name=disk0,addr.type=unix,addr.path=${sock},writable=on`,
    ]);
    daemon.stderr?.on("data", (d: Buffer) => {
      daemonLog += d.toString();
    });
    daemon.on("exit", (code) => {
      w.close();
      reject(new Error(`${QSD} exited with ${code} before listening: ${daemonLog}`));
    });
  });
  await appeared;
}

/**
 * The socket file appears when qemu-storage-daemon binds it, a moment before it listens: a
 * connect in between is refused. Retry refused connects for a bounded time.
 */
async function connectWhenListening<T>(connect: () => Promise<T>, timeoutMs = 10_000): Promise<T> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    try {
      return await connect();
    } catch (e) {
      if (!/Connection refused/.test((e as Error).message) || performance.now() > deadline) throw e;
      await new Promise((r) => setTimeout(r, 20));
    }
  }
}

async function stopDaemon(): Promise<void> {
  const d = daemon;
  daemon = undefined;
  if (d === undefined || d.exitCode !== null) return;
  const exited = new Promise((r) => d.once("exit", r));
  d.kill("SIGTERM");
  await exited;
}

beforeAll(async () => {
  loadNative(); // "native addon not built: run …" if missing
  dir = mkdtempSync(join(tmpdir(), "vhost-user-blk-"));
  img = join(dir, "disk.img");
  sock = join(dir, "vhost.sock");
  const image = new Uint8Array(SECTORS * 512);
  for (let s = 0; s < SECTORS; s++) image.set(pattern(s), s * 512);
  writeFileSync(img, image);
  await startDaemon();
});

afterAll(async () => {
  await stopDaemon();
  if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
});

describe("BlkDriver over vhost-user against qemu-storage-daemon's vhost-user-blk export", () => {
  let shared: SharedGuestMemory;
  let t: VhostUserDriverTransport;
  let blk: BlkDriver;

  it("connects, negotiates and reads the capacity from GET_CONFIG", async () => {
    shared = createSharedMemory({ size: 4 << 20 });
    t = await connectWhenListening(() =>
      VhostUserDriverTransport.connect(sock, {
        deviceId: DeviceId.BLOCK,
        memory: shared,
        // qemu-storage-daemon 7.2 offers VIRTIO_BLK_F_SIZE_MAX with size_max = 0, which
        // BlkDriver refuses (Linux clamps it to a page): withhold the bit.
        hiddenFeatures: featureMask(BlkFeature.SIZE_MAX),
      }),
    );
    blk = new BlkDriver(t, shared.memory, new SlabAllocator(0x100000, 4096, 512), {
      ringBase: 0x10000,
      queueSize: 128,
    });
    t.onInterrupt(() => blk.onInterrupt());
    expect(blk.capacity).toBe(BigInt(SECTORS));
    expect(hasFeature(blk.features, Feature.VERSION_1)).toBe(true);
    expect(hasFeature(blk.features, BlkFeature.FLUSH)).toBe(true);
    expect(t.queueCount).toBe(1);
    expect(t.needsReset).toBe(false);
  });

  it("reads the pattern the image was filled with", async () => {
    const reads = [0, 1, 777, 8000, SECTORS - 16].map((s) => blk.read(s, 16 * 512));
    const got = await Promise.all(reads);
    [0, 1, 777, 8000, SECTORS - 16].forEach((s, k) => {
      for (let i = 0; i < 16; i++) {
        expect(got[k]!.subarray(i * 512, (i + 1) * 512)).toEqual(pattern(s + i));
      }
    });
  });

  const writes: { sector: number; data: Uint8Array }[] = [];
  it("writes at 96 offsets with the requests in flight together, then flushes", async () => {
    for (let k = 0; k < 96; k++) {
      const sector = (k * 167 + 5) % (SECTORS - 64);
      writes.push({ sector, data: random(512 * (1 + (k % 24)), k + 1) });
    }
    // Keep the writes disjoint so the final image does not depend on completion order.
    writes.sort((a, b) => a.sector - b.sector);
    for (let k = 1; k < writes.length; k++) {
      const prev = writes[k - 1]!;
      const end = prev.sector + prev.data.length / 512;
      if (writes[k]!.sector < end) writes[k] = { ...writes[k]!, sector: end };
    }
    const all = writes.map((w) => blk.write(w.sector, w.data));
    expect(blk.inFlight + blk.waiting).toBe(96);
    await Promise.all(all);
    await blk.flush();
    expect(blk.inFlight).toBe(0);
  });

  it("reads back what it wrote", async () => {
    const sample = writes.filter((_, k) => k % 7 === 0);
    const got = await Promise.all(sample.map((w) => blk.read(w.sector, w.data.length)));
    sample.forEach((w, k) => {
      expect(got[k]).toEqual(w.data);
    });
  });

  it("stops the ring: GET_VRING_BASE reports one available entry per request made", async () => {
    // 5 reads + 96 writes + 1 flush + the read-backs, each a single request (≤ 64 KiB).
    const readBacks = writes.filter((_, k) => k % 7 === 0).length;
    expect(await t.stop()).toEqual(new Map([[0, 5 + 96 + 1 + readBacks]]));
    t.close();
    shared.close();
  });

  it("leaves an image file that agrees once the daemon has stopped", async () => {
    await stopDaemon();
    const expected = new Uint8Array(SECTORS * 512);
    for (let s = 0; s < SECTORS; s++) expected.set(pattern(s), s * 512);
    for (const w of writes) expected.set(w.data, w.sector * 512);
    const file = new Uint8Array(readFileSync(img));
    expect(file.length).toBe(expected.length);
    let firstDiff = -1;
    for (let i = 0; i < file.length; i++) {
      if (file[i] !== expected[i]) {
        firstDiff = i;
        break;
      }
    }
    expect(firstDiff).toBe(-1);
  });
});
