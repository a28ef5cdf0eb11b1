// Back-end crash and reconnect with a real Linux guest (QEMU 7.2, TCG): our vhost-user-blk
// back-end runs in its own process; while two writers in the guest write 512 KiB each with
// O_DIRECT, one write is held (never completed) while the other writer's go on, so requests
// complete out of order; then the back-end is killed with SIGKILL, a new one starts on the
// same socket, QEMU reconnects (`-chardev socket,...,reconnect=1`) and hands it the in-flight
// area (VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD). QEMU itself only knows `used.idx` after a crash,
// which here lies past the held write: without the area that write would never be served and
// the guest would hang. The new back-end serves it again, and the workload finishes with
// every write on disk and no I/O error.
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { explainGuest, type KernelInfo, requireTools, startGuest } from "@virtio-ts/interop";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { md5, pattern } from "../../../test-support/pattern.js";

const BOOT_TEST_TIMEOUT = 300_000;
const IMAGE = 16 << 20;
const fixture = fileURLToPath(new URL("./fixtures/vhost-user-blk-server.mjs", import.meta.url));

let kernel: KernelInfo;
const dir = mkdtempSync(join(tmpdir(), "vu-blk-reconnect-"));
const children = new Set<ChildProcess>();
beforeAll(() => {
  kernel = requireTools(["qemu-system-x86_64"]);
  // The back-end processes run the built packages.
  const tsc = fileURLToPath(new URL("../../../node_modules/typescript/bin/tsc", import.meta.url));
  const root = fileURLToPath(new URL("../../..", import.meta.url));
  execFileSync(
    process.execPath,
    [tsc, "-b", join(root, "packages/vhost-user"), join(root, "packages/backend-disk")],
    { stdio: "inherit" },
  );
});
afterAll(() => {
  for (const c of children) c.kill("SIGKILL");
  rmSync(dir, { recursive: true, force: true });
});

interface Server {
  readonly child: ChildProcess;
  readonly lines: string[];
  waitFor(pattern: RegExp): Promise<string>;
}

function startServer(sock: string, img: string, holdAfter?: number): Server {
  const child = spawn(
    process.execPath,
    [fixture, JSON.stringify({ sock, img, queueSize: 128, writeDelayMs: 5, holdAfter })],
    { stdio: ["ignore", "pipe", "inherit"] },
  );
  children.add(child);
  child.once("exit", () => children.delete(child));
  const lines: string[] = [];
  const waiters: { re: RegExp; resolve: (l: string) => void }[] = [];
  createInterface({ input: child.stdout! }).on("line", (l) => {
    lines.push(l);
    for (const w of waiters.filter((w) => w.re.test(l))) {
      waiters.splice(waiters.indexOf(w), 1);
      w.resolve(l);
    }
  });
  return {
    child,
    lines,
    waitFor: (re) => {
      const seen = lines.find((l) => re.test(l));
      if (seen !== undefined) return Promise.resolve(seen);
      return new Promise((resolve, reject) => {
        waiters.push({ re, resolve });
        child.once("exit", (code, sig) =>
          reject(new Error(`back-end exited (${code ?? sig}) before ${re}: ${lines.join(" | ")}`)),
        );
      });
    },
  };
}

describe("SIGKILL of our vhost-user-blk back-end under a guest's write workload", () => {
  it(
    "a new back-end on the same socket serves the in-flight writes again: every write is on disk, no I/O error",
    async () => {
      const img = join(dir, "disk.img");
      const sock = join(dir, "blk.sock");
      writeFileSync(img, new Uint8Array(IMAGE));
      const payload = pattern(512 << 10, 29);
      const payload2 = pattern(512 << 10, 31);
      // The first back-end completes 40 writes, then takes the 41st and never finishes it.
      const first = startServer(sock, img, 40);
      await first.waitFor(/^listening$/);
      let second: Server | undefined;
      let killedAt = 0;
      const guest = await startGuest({
        machine: "pc",
        kernel,
        modules: ["virtio_pci", "virtio_blk"],
        sharedMemory: true,
        files: [
          { kind: "file", path: "/payload.bin", data: payload },
          { kind: "file", path: "/payload2.bin", data: payload2 },
        ],
        args: [
          "-chardev",
          `socket,id=c0,path=${sock},reconnect=1`,
          "-device",
          "vhost-user-blk-pci,chardev=c0,queue-size=128",
        ],
        script: [
          // Two writers of 128 synchronous 4 KiB writes each, at 1 MiB and 4 MiB.
          "dd if=/payload.bin of=/dev/vda bs=4k seek=256 oflag=direct 2>/dev/null & a=$!",
          "dd if=/payload2.bin of=/dev/vda bs=4k seek=1024 oflag=direct 2>/dev/null & b=$!",
          'wait $a; echo "ddA=$?"; wait $b; echo "ddB=$?"',
          'echo "backA=$(dd if=/dev/vda bs=4k skip=256 count=128 iflag=direct 2>/dev/null | md5sum | cut -d" " -f1)"',
          'echo "backB=$(dd if=/dev/vda bs=4k skip=1024 count=128 iflag=direct 2>/dev/null | md5sum | cut -d" " -f1)"',
          'echo "ioerrors=$(dmesg | grep -ci -e "I/O error" -e "blk_update_request")"',
          "",
        ].join("\n"),
        timeoutMs: 200_000,
      });
      try {
        // One write held, the other writer's 20 more completed after it: kill the back-end,
        // start another on the same socket.
        await first.waitFor(/^holding$/);
        await first.waitFor(/^writes 60$/);
        first.child.kill("SIGKILL");
        killedAt = performance.now();
        await new Promise((r) => first.child.once("exit", r));
        second = startServer(sock, img);
        await second.waitFor(/^listening$/);
      } catch (e) {
        guest.kill();
        throw e;
      }
      const result = await guest.result;
      second.child.kill("SIGTERM");
      await new Promise((r) => second!.child.once("exit", r));
      const why = `${explainGuest(result, 40)}\n--- first back-end ---\n${first.lines.join("\n")}\n--- second back-end ---\n${second.lines.join("\n")}`;
      const resubmitted = second.lines
        .map((l) => /serving again (\d+) requests/.exec(l))
        .filter((m) => m !== null)
        .map((m) => Number(m![1]));
      console.info(
        `[interop] SIGKILL + reconnect: ${Math.round(result.durationMs)} ms; back-end down ${Math.round(performance.now() - killedAt)} ms before the guest finished; resubmitted ${JSON.stringify(resubmitted)}`,
      );

      expect(result.timedOut, why).toBe(false);
      expect(result.guestExit, why).toBe(0);
      expect(result.output, why).toContain("ddA=0\n");
      expect(result.output, why).toContain("ddB=0\n");
      expect(result.output, why).toContain(`backA=${md5(payload)}\n`);
      expect(result.output, why).toContain(`backB=${md5(payload2)}\n`);
      expect(result.output, why).toContain("ioerrors=0\n");
      // The write the dead back-end had taken was served again by the new one.
      expect(
        resubmitted.reduce((a, b) => a + b, 0),
        why,
      ).toBeGreaterThanOrEqual(1);
      // Every write is in the file.
      const after = new Uint8Array(readFileSync(img));
      expect(md5(after.subarray(1 << 20, (1 << 20) + payload.length))).toBe(md5(payload));
      expect(md5(after.subarray(4 << 20, (4 << 20) + payload2.length))).toBe(md5(payload2));
      expect(after.subarray(0, 1 << 20).every((b) => b === 0)).toBe(true);
    },
    BOOT_TEST_TIMEOUT,
  );
});
