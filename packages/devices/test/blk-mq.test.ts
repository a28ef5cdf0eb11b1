// virtio-blk TOPOLOGY and MQ (VIRTIO 1.3 §5.2.3, §5.2.4): the topology fields follow the
// back-end's block size, and with numQueues > 1 every request queue is served on its own —
// a reset of one queue drops only that queue's completions.
import { createGuestMemory } from "@virtio-ts/memory";
import {
  BlkConfig,
  BlkFeature,
  BlkStatus,
  Feature,
  featureMask,
  hasFeature,
} from "@virtio-ts/spec";
import { InThreadMmio } from "@virtio-ts/transport";
import type { DriverQueue } from "@virtio-ts/virtqueue";
import { describe, expect, it } from "vitest";
import { BlkDevice } from "../src/index.js";
import { TestBackend } from "./helpers/test-backend.js";

describe("BlkDevice TOPOLOGY (§5.2.4)", () => {
  it("reports physical_block_exp, alignment_offset, min_io_size and opt_io_size from blk_size", () => {
    const model = new BlkDevice(new TestBackend(64, { blockSize: 4096 }), { optimalIoBlocks: 256 });
    expect(hasFeature(model.features, BlkFeature.TOPOLOGY)).toBe(true);
    expect([
      model.readConfig(BlkConfig.PHYSICAL_BLOCK_EXP, 1),
      model.readConfig(BlkConfig.ALIGNMENT_OFFSET, 1),
      model.readConfig(BlkConfig.MIN_IO_SIZE, 2),
      model.readConfig(BlkConfig.OPT_IO_SIZE, 4),
    ]).toEqual([3, 0, 8, 256]);
  });
});

describe("BlkDevice MQ (§5.2.3, §5.2.4)", () => {
  it("offers MQ only with several queues and reports num_queues", () => {
    const one = new BlkDevice(new TestBackend(8));
    expect(hasFeature(one.features, BlkFeature.MQ)).toBe(false);
    const four = new BlkDevice(new TestBackend(8), { numQueues: 4, queueSize: 16 });
    expect(hasFeature(four.features, BlkFeature.MQ)).toBe(true);
    expect(four.readConfig(BlkConfig.NUM_QUEUES, 2)).toBe(4);
    expect(four.queueMaxSizes).toEqual([16, 16, 16, 16]);
    expect(() => new BlkDevice(new TestBackend(8), { numQueues: 0 })).toThrow(/options\.numQueues/);
  });

  it("serves each queue on its own, and a reset of queue 1 drops only queue 1's completion", async () => {
    const memory = createGuestMemory({ size: 0x100000 });
    const backend = new TestBackend(64);
    const model = new BlkDevice(backend, { numQueues: 2, queueSize: 16 });
    const { transport: t } = new InThreadMmio(model, { memory, delivery: "none" });
    const f = t.negotiate((o) => o & ~featureMask(Feature.RING_PACKED));
    expect(hasFeature(f, BlkFeature.MQ) && hasFeature(f, Feature.RING_RESET)).toBe(true);
    const layout = (i: number) => ({
      size: 16,
      desc: 0x1000 + i * 0x1000,
      driver: 0x1400 + i * 0x1000,
      device: 0x1800 + i * 0x1000,
    });
    const qs: DriverQueue<number>[] = [0, 1].map((i) => t.setupQueue<number>(i, memory, layout(i)));
    t.driverOk();
    // One OUT request per queue: header, one sector of data, status.
    const submit = (i: number, sector: number, fill: number) => {
      const base = 0x10000 + i * 0x1000;
      memory.writeU32(base, 1); // VIRTIO_BLK_T_OUT
      memory.writeU64(base + 8, BigInt(sector));
      memory.write(base + 0x100, new Uint8Array(512).fill(fill));
      qs[i]!.add(
        [
          { addr: base, len: 16 },
          { addr: base + 0x100, len: 512 },
        ],
        [{ addr: base + 0x400, len: 1 }],
        i + 1,
      );
      if (qs[i]!.publish()) t.notify(i);
      return base + 0x400;
    };
    backend.hold = true;
    const status0 = submit(0, 2, 0xa0);
    submit(1, 3, 0xb1);
    expect(backend.parked.length).toBe(2);
    t.resetQueue(1);
    await backend.release(0);
    await backend.release(1);
    await model.whenIdle();
    expect(qs[0]!.reap()).toBe(1);
    expect(memory.readU8(status0)).toBe(BlkStatus.OK);
    expect(model.stats.stale).toBe(1);
    // Queue 1 works again once set up afresh.
    backend.hold = false;
    qs[1] = t.setupQueue<number>(1, memory, layout(1));
    const status1 = submit(1, 4, 0xc2);
    await model.whenIdle();
    expect(qs[1]!.reap()).toBe(2);
    expect(memory.readU8(status1)).toBe(BlkStatus.OK);
    expect(backend.bytes.subarray(4 * 512, 5 * 512)).toEqual(new Uint8Array(512).fill(0xc2));
  });
});
