import { spawnSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import {
  explainGuest,
  type KernelInfo,
  requireTools,
  runGuest,
  sharedMemoryArgs,
  stripEscapes,
} from "../src/index.js";

/** A hang guard: the test may first wait for other suites' guests (one runs at a time). */
const BOOT_TEST_TIMEOUT = 240_000;

let kernel: KernelInfo;

beforeAll(() => {
  kernel = requireTools(["qemu-system-x86_64"]);
});

describe("stripEscapes", () => {
  it("removes CSI, charset and OSC sequences, carriage returns and NULs but keeps the text", () => {
    expect(stripEscapes("\x1b[2J\x1b[01;01HSeaBIOS\r\n\x1b(Bok\x1b]0;title\x07\0!")).toBe(
      "SeaBIOS\nok!",
    );
  });
});

describe("requireTools", () => {
  it("fails naming the missing program and the apt packages to install", () => {
    expect(() => requireTools(["no-such-program-for-interop"])).toThrow(
      /no-such-program-for-interop.*apt-get install .*qemu-system-x86 linux-image-amd64 busybox-static tshark cpio/,
    );
  });
});

describe("guest slots", () => {
  it("runs guests one at a time across callers and take over a lock whose process is gone", async () => {
    const dir = mkdtempSync(join(tmpdir(), "interop-slots-"));
    try {
      // A stand-in for QEMU that logs its start and end around a short sleep.
      const log = join(dir, "order.log");
      const fake = join(dir, "fake-qemu");
      writeFileSync(
        fake,
        `#!/bin/sh\necho "start $$" >> ${log}\nsleep 0.2\necho "end $$" >> ${log}\necho ${"@@INTEROP-START@@"}\necho "@@INTEROP-EXIT 3@@"\n`,
        { mode: 0o755 },
      );
      // A lock left by a process that has exited.
      const dead = spawnSync("true").pid!;
      writeFileSync(join(dir, "qemu-slot-0.lock"), `${dead}`);
      const options = {
        script: "true\n",
        kernel,
        qemu: fake,
        accel: "tcg" as const,
        slotDir: dir,
        slotTimeoutMs: 30_000,
      };
      const results = await Promise.all([runGuest(options), runGuest(options), runGuest(options)]);
      expect(results.map((r) => r.guestExit)).toEqual([3, 3, 3]);
      const events = readFileSync(log, "utf8").trim().split("\n");
      expect(events).toHaveLength(6);
      for (let i = 0; i < 6; i += 2) {
        expect(events[i]).toMatch(/^start \d+$/);
        expect(events[i + 1]).toBe(events[i]!.replace("start", "end"));
      }
      expect(readdirSync(dir).filter((f) => f.endsWith(".lock"))).toEqual([]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("sharedMemoryArgs", () => {
  it("backs guest RAM with a shared memfd on NUMA node 0", () => {
    expect(sharedMemoryArgs(256)).toEqual([
      "-object",
      "memory-backend-memfd,id=mem,size=256M,share=on",
      "-numa",
      "node,memdev=mem",
    ]);
  });
});

describe.each(["pc", "microvm"] as const)("a Linux guest on %s", (machine) => {
  it(
    "boots, runs the script, prints uname -r and a marker and powers off with its status",
    async () => {
      const marker = `marker-${machine}-${process.pid}`;
      const r = await runGuest({
        machine,
        kernel,
        script: `echo "kernel=$(uname -r)"\necho ${marker}\nexit 7\n`,
        timeoutMs: 90_000,
      });
      const why = explainGuest(r);
      expect(r.timedOut, why).toBe(false);
      expect(r.output, why).toContain(`kernel=${kernel.version}\n`);
      expect(r.output, why).toContain(`${marker}\n`);
      expect(r.guestExit, why).toBe(7);
      expect(r.qemuExit, why).toBe(0);
      expect(r.log).not.toContain("INSMOD-FAILED");
      expect(r.log).not.toContain("\x1b");
      console.info(`[interop] ${machine} boot to poweroff: ${Math.round(r.durationMs)} ms`);
    },
    BOOT_TEST_TIMEOUT,
  );
});

describe("extra QEMU arguments", () => {
  it(
    "boots microvm with shared memfd RAM and a modern virtio-mmio device given as -device",
    async () => {
      const r = await runGuest({
        machine: "microvm",
        kernel,
        sharedMemory: true,
        modules: ["virtio_mmio", "virtio_rng"],
        args: ["-device", "virtio-rng-device"],
        script: [
          'echo "device=$(cat /sys/bus/virtio/devices/virtio0/device)"',
          'echo "features=$(cat /sys/bus/virtio/devices/virtio0/features)"',
          "echo \"rng=$(head -c 16 /dev/hwrng | od -An -tx1 | tr -d ' \\n')\"",
          "",
        ].join("\n"),
        timeoutMs: 90_000,
      });
      const why = explainGuest(r);
      expect(r.argv.join(" ")).toContain(
        "-object memory-backend-memfd,id=mem,size=256M,share=on -numa node,memdev=mem",
      );
      expect(r.guestExit, why).toBe(0);
      expect(r.output, why).toContain("device=0x0004\n"); // VIRTIO_ID_RNG
      const features = /features=([01]{64})/.exec(r.output)?.[1];
      // Bit 32 is VIRTIO_F_VERSION_1: set only on a modern device (force-legacy=false).
      expect(features?.[32], why).toBe("1");
      expect(r.output, why).toMatch(/rng=[0-9a-f]{32}\n/);
    },
    BOOT_TEST_TIMEOUT,
  );
});
