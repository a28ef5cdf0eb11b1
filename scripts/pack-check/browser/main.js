// The page of the packaging check: imports every browser-safe entry of the installed tarballs
// (bundled with no externals) and runs, in the browser, a virtio-blk write / read round trip
// (BlkDriver ↔ BlkDevice over MemoryDisk on virtio-mmio, split and packed rings), the contract
// kit's blk device suite, and a split ring whose device side runs in a Web Worker. The result
// lands in window.__packCheck for the harness (scripts/pack-check.mjs) to read.
import { MemoryDisk } from "@virtio-ts/backend-disk";
import { Switch } from "@virtio-ts/backend-net";
import { blkDeviceSuite, runContract } from "@virtio-ts/contract";
import { BlkDevice } from "@virtio-ts/devices";
import { BlkDriver, SlabAllocator } from "@virtio-ts/drivers";
import { mirror } from "@virtio-ts/interpose";
import { createGuestMemory, GuestMemoryMap } from "@virtio-ts/memory";
import { DeviceId, Feature, hasFeature } from "@virtio-ts/spec";
import { InThreadMmio, SharedDoorbell } from "@virtio-ts/transport";
import { V86VirtioBus } from "@virtio-ts/v86";
import { NO_RING_FEATURES, ringLayoutAt, SplitDriverQueue } from "@virtio-ts/virtqueue";
// Every browser-safe entry of every package, whole (written by scripts/pack-check.mjs).
import * as everything from "./all-entries.js";

const check = (ok, what) => {
  if (!ok) throw new Error(what);
};

/**
 * BlkDriver ↔ BlkDevice on virtio-mmio in this thread, over a plain ArrayBuffer; the device's
 * back-end mirrors every write to two MemoryDisks (interpose's mirror).
 */
async function blkRoundTrip(packed) {
  const memory = createGuestMemory({ size: 0x200000, shared: false });
  const disk = MemoryDisk.ofSize(1 << 20);
  const copy = MemoryDisk.ofSize(1 << 20);
  const vm = new InThreadMmio(new BlkDevice(mirror([disk, copy])), { memory });
  const blk = new BlkDriver(vm.transport, memory, new SlabAllocator(0x100000, 4096, 64), {
    ringBase: 0x10000,
    queueSize: 64,
    packed,
  });
  vm.line.handler = () => blk.onInterrupt();
  const data = new Uint8Array(8192);
  for (let i = 0; i < data.length; i++) data[i] = (i * 7 + 3) & 0xff;
  await blk.write(16, data);
  await blk.flush();
  const back = await blk.read(16, data.length);
  check(
    back.every((b, i) => b === data[i]),
    "blk: the data read back differs",
  );
  for (const d of [disk, copy]) {
    const held = d.bytes.subarray(16 * 512, 16 * 512 + data.length);
    check(
      held.every((b, i) => b === data[i]),
      "blk: a mirrored disk does not hold the data",
    );
  }
  return {
    capacity: Number(blk.capacity),
    packed: hasFeature(blk.features, Feature.RING_PACKED),
    bytes: back.length,
  };
}

/** A split ring: the driver here, the device in a Web Worker, shared memory and doorbells. */
async function workerSplitRing(requests) {
  const buffer = new SharedArrayBuffer(0x20000);
  const memory = new GuestMemoryMap([{ guestBase: 0, size: buffer.byteLength, buffer }]);
  const layout = ringLayoutAt(0x1000, 64);
  const driver = new SplitDriverQueue(memory, layout, NO_RING_FEATURES);
  const kick = new SharedDoorbell();
  const irq = new SharedDoorbell();
  const worker = new Worker(new URL("./worker.js", import.meta.url), { type: "module" });
  const finished = new Promise((resolve, reject) => {
    worker.onmessage = (e) => (e.data.error ? reject(new Error(e.data.error)) : resolve(e.data));
    worker.onerror = (e) => reject(new Error(`worker: ${e.message}`));
  });
  worker.postMessage({ buffer, layout, kick: kick.handle, irq: irq.handle, requests });
  const REQ = 0x8000;
  const REP = 0x10000;
  let sent = 0;
  let done = 0;
  let interrupts = 0;
  while (done < requests) {
    while (sent < requests) {
      const slot = sent % 64;
      const req = new Uint8Array(8);
      for (let k = 0; k < 8; k++) req[k] = (sent + k) & 0xff;
      memory.write(REQ + slot * 8, req);
      if (!driver.add([{ addr: REQ + slot * 8, len: 8 }], [{ addr: REP + slot * 8, len: 8 }], sent))
        break;
      sent++;
    }
    if (driver.publish()) kick.ring();
    check(await irq.wait(10_000), `no interrupt from the worker after ${done} requests`);
    irq.take();
    interrupts++;
    for (let token = driver.reap(); token !== undefined; token = driver.reap()) {
      check(driver.lastLen === 8, `request ${token}: used length ${driver.lastLen}`);
      const reply = new Uint8Array(8);
      memory.read(REP + (token % 64) * 8, reply);
      for (let k = 0; k < 8; k++) {
        check(reply[k] === ((token + 7 - k) & 0xff), `request ${token}: wrong reply byte ${k}`);
      }
      done++;
    }
  }
  const { served } = await finished;
  worker.terminate();
  return { requests: done, served, interrupts };
}

async function main() {
  const entries = Object.keys(everything).filter((k) => k.startsWith("entry"));
  check(entries.length === everything.count, "not every browser-safe entry was bundled");
  for (const k of entries) {
    // biome-ignore lint/performance/noDynamicNamespaceImportAccess: the point is to keep every export
    check(Object.keys(everything[k]).length > 0, `${k} exports nothing`);
  }
  check(typeof V86VirtioBus.of === "function", "v86: no V86VirtioBus.of");
  check(new Switch().createPort({ name: "a" }) !== undefined, "backend-net: no switch port");
  const split = await blkRoundTrip(false);
  const packed = await blkRoundTrip(true);
  check(!split.packed && packed.packed, "blk: the ring types were not negotiated as asked");
  const report = await runContract(blkDeviceSuite, {
    create: ({ image, readOnly }) => new BlkDevice(new MemoryDisk(image, { readOnly })),
    readDisk: (model, sector, length) =>
      model.backend.bytes.slice(sector * 512, sector * 512 + length),
  });
  const failed = report.results.filter((r) => r.outcome === "failed");
  check(report.ok, `contract: ${failed.map((r) => `${r.name}: ${r.reason}`).join("; ")}`);
  const worker = await workerSplitRing(5000);
  return {
    ok: true,
    entries: entries.length,
    crossOriginIsolated: globalThis.crossOriginIsolated === true,
    deviceId: DeviceId.BLOCK,
    blk: { split, packed },
    contract: { checks: report.results.length, passed: report.results.length - failed.length },
    worker,
  };
}

main().then(
  (r) => {
    window.__packCheck = r;
    document.getElementById("out").textContent = JSON.stringify(r, null, 2);
  },
  (e) => {
    window.__packCheck = { ok: false, error: String(e?.stack ?? e) };
    document.getElementById("out").textContent = String(e?.stack ?? e);
  },
);
