import { describe, expect, it } from "vitest";
import {
  BUILD_NATIVE_COMMAND,
  createSharedMemory,
  EventFd,
  loadNative,
  mapSharedFd,
  NativeAddonMissingError,
} from "../src/index.js";

describe("the native addon wrapper", () => {
  it("explains how to build the addon when it is missing", () => {
    const e = new NativeAddonMissingError(new Error("Cannot find module vhost_user.node"));
    expect(e.message).toContain("@virtio-ts/vhost-user: native addon not built: run");
    expect(e.message).toContain(BUILD_NATIVE_COMMAND);
    expect(e.code).toBe("native-addon-missing");
  });

  it("loads here (the test run builds it first; a missing addon fails this test)", () => {
    expect(typeof loadNative().sendMsg).toBe("function");
  });
});

describe("EventFd", () => {
  it("counts signals and resets on take", () => {
    const e = new EventFd();
    try {
      expect(e.take()).toBe(0n);
      e.signal();
      e.signal();
      e.signal();
      expect(e.take()).toBe(3n);
      expect(e.take()).toBe(0n);
    } finally {
      e.close();
    }
    expect(() => e.signal()).toThrow(RangeError);
  });

  it("calls its watcher from the event loop with the count taken", async () => {
    const e = new EventFd();
    try {
      const got = new Promise<bigint>((resolve) => e.watch(resolve));
      e.signal();
      e.signal();
      expect(await got).toBe(2n);
      expect(e.take()).toBe(0n);
      expect(() => e.watch(() => {})).toThrow(/already watched/);
    } finally {
      e.close();
    }
  });
});

describe("shared guest memory", () => {
  it("is one memfd region that a second MAP_SHARED mapping sees", () => {
    const s = createSharedMemory({ size: 0x4000, guestBase: 0x8000 });
    try {
      expect(s.memory.regions.length).toBe(1);
      expect(s.regions[0]!.memorySize).toBe(0x4000n);
      const other = new DataView(mapSharedFd(s.regions[0]!.fd, 0x4000).buffer);
      s.memory.writeU64(0x8008, 0x0102030405060708n);
      expect(other.getBigUint64(8, true)).toBe(0x0102030405060708n);
      expect(s.userAddress(0x8000, 0x4000)).toBe(s.regions[0]!.userspaceAddr);
      expect(s.userAddress(0x8000, 0x4001)).toBe(undefined);
      expect(s.userAddress(0x7fff, 1)).toBe(undefined);
    } finally {
      s.close();
    }
  });

  it("names a bad size or base", () => {
    expect(() => createSharedMemory({ size: 0 })).toThrow(/options\.size/);
    expect(() => createSharedMemory({ size: 4096, guestBase: 100 })).toThrow(/options\.guestBase/);
    expect(() => mapSharedFd(-1, 4096)).toThrow(/fd/);
  });
});
