import { vringNeedEvent } from "@virtio-ts/spec";
import { GuestMemoryError } from "@virtio-ts/memory";
import { expect, test } from "vitest";
test("source condition resolves workspace packages", () => {
  expect(vringNeedEvent(0, 1, 0)).toBe(true);
  expect(new GuestMemoryError("out-of-bounds", 16, 4).code).toBe("out-of-bounds");
});
