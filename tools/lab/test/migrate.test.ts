import { MemoryDisk } from "@virtio-ts/backend-disk";
import { BlkDevice } from "@virtio-ts/devices";
import { createGuestMemory } from "@virtio-ts/memory";
import { MmioDevice } from "@virtio-ts/transport";
import { describe, expect, it } from "vitest";
import {
  decodeSnapshot,
  encodeSnapshot,
  MigrationError,
  QueueGate,
  resumeFrom,
  snapshot,
} from "../src/migrate.js";
import { makeImage } from "../src/rigs.js";
import { migrationScenario } from "../src/scenarios.js";

const image = makeImage(1 << 20);

describe("suspend / encode / resume", () => {
  it("completes every request exactly once across the move: 24 drained from the back-end, 8 left in the ring for the new device", async () => {
    const m = await migrationScenario(image, 24, 8);
    expect(m.inBackendAtStop).toBe(24);
    expect(m.unpoppedAtStop).toBe(8);
    expect(m.drainedUnreaped).toBe(24);
    expect(m.oldServed).toBe(24);
    expect(m.newServed).toBe(8);
    expect(m.completedOnce).toBe(32);
    expect(m.anomalies).toBe(0);
  });

  it("resumes a device stopped with nothing in the back-end: the new device serves all 5 requests left in the ring", async () => {
    const m = await migrationScenario(image, 0, 5);
    expect(m.oldServed).toBe(0);
    expect(m.newServed).toBe(5);
    expect(m.completedOnce).toBe(5);
  });

  it("encodes a snapshot that decodes to the same fields", () => {
    const dev = new MmioDevice(new BlkDevice(new MemoryDisk(new Uint8Array(image))), {
      memory: createGuestMemory({ size: 0x100000 }),
    });
    const s = snapshot(dev);
    const back = decodeSnapshot(encodeSnapshot(s));
    expect(back).toEqual({ ...s, config: new Uint8Array(s.config) });
  });

  it("refuses hostile bytes with MigrationError bad-stream and nothing else", () => {
    const good = encodeSnapshot(
      snapshot(
        new MmioDevice(new BlkDevice(new MemoryDisk(new Uint8Array(image))), {
          memory: createGuestMemory({ size: 0x100000 }),
        }),
      ),
    );
    const cases = [
      new Uint8Array(3),
      good.subarray(0, good.length - 1),
      Uint8Array.from(good, (b, i) => (i === 0 ? b ^ 1 : b)),
      Uint8Array.from(good, (b, i) => (i === 44 || i === 45 ? 0xff : b)),
    ];
    for (const bytes of cases) {
      const e = (() => {
        try {
          decodeSnapshot(bytes);
        } catch (x) {
          return x;
        }
        return undefined;
      })();
      expect(e).toBeInstanceOf(MigrationError);
      expect((e as MigrationError).code).toBe("bad-stream");
    }
  });

  it("refuses to resume on a device with a different disk (configuration differs) as incompatible", () => {
    const memory = createGuestMemory({ size: 0x100000 });
    const bytes = encodeSnapshot(
      snapshot(new MmioDevice(new BlkDevice(new MemoryDisk(new Uint8Array(image))), { memory })),
    );
    const other = new QueueGate(new BlkDevice(MemoryDisk.ofSize(2 << 20)));
    const e = (() => {
      try {
        resumeFrom(bytes, other, { memory });
      } catch (x) {
        return x;
      }
      return undefined;
    })();
    expect((e as MigrationError).code).toBe("incompatible");
  });
});
