// Keeps the virtio-balloon example of the README running.
import { createGuestMemory } from "@virtio-ts/memory";
import { MmioDevice } from "@virtio-ts/transport";
import { expect, it } from "vitest";
import { BalloonDevice } from "../src/balloon.js";

it("runs the README's virtio-balloon example: num_pages shows the host's target", () => {
  const memory = createGuestMemory({ size: 16 << 20 });
  const released: [number, number][] = [];
  const balloon = new BalloonDevice({
    ram: 16 << 20,
    statsIntervalMs: 1000,
    host: { inflated: (gpa, bytes) => released.push([gpa, bytes]) },
  });
  const device = new MmioDevice(balloon, { memory });
  balloon.setTarget(1024);
  expect(device.read(0x100, 4)).toBe(1024);
  expect(released).toEqual([]);
});
