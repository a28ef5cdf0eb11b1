// virtio-vsock with a real Linux guest (QEMU 7.2, TCG): the guest's vhost-user-vsock-pci is
// our VsockDevice behind VhostUserVsockBackend. A small static C program in the initramfs
// (fixtures/vsock-echo.c, built with `gcc -static` here) connects to host CID 2 and sends
// 256 KiB to our TypeScript listener, which answers with the bytes transformed; the other way,
// our host side connects to the C program listening in the guest and gets its echo. Both
// transfers pass the sockets' credit many times over (flow control, §5.10.6.3).
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { VsockDevice, type VsockStream } from "@virtio-ts/devices";
import { explainGuest, type KernelInfo, requireTools, startGuest } from "@virtio-ts/interop";
import { type VhostUserError, VhostUserVsockBackend } from "@virtio-ts/vhost-user";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { md5, pattern } from "../../../test-support/pattern.js";

const BOOT_TEST_TIMEOUT = 300_000;
const GUEST_CID = 7;
const HOST_PORT = 1234;
const GUEST_PORT = 5000;
const source = fileURLToPath(new URL("./fixtures/vsock-echo.c", import.meta.url));

let kernel: KernelInfo;
let program: Uint8Array;
const dir = mkdtempSync(join(tmpdir(), "vu-vsock-"));
beforeAll(() => {
  kernel = requireTools(["qemu-system-x86_64", "gcc"]);
  const out = join(dir, "vsock-echo");
  try {
    execFileSync("gcc", ["-static", "-O2", "-Wall", "-o", out, source], { stdio: "pipe" });
  } catch (e) {
    throw new Error(
      `gcc -static failed (${(e as { stderr?: Buffer }).stderr?.toString() ?? e}): install gcc and libc6-dev (apt-get install -y gcc libc6-dev)`,
    );
  }
  program = new Uint8Array(readFileSync(out));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** Everything a stream receives until the guest's end of stream. */
function readAll(s: VsockStream): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  return new Promise((resolve, reject) => {
    s.on("data", (d) => parts.push(d));
    s.on("end", () => resolve(Buffer.concat(parts)));
    s.on("error", reject);
  });
}

describe("a Linux guest on our vhost-user-vsock back-end (VsockDevice)", () => {
  it(
    "a static C program connects to host CID 2 and exchanges 256 KiB both ways with our listener, and echoes what our host connection sends",
    async () => {
      const payload = pattern(256 << 10, 17);
      const reply = payload.map((b) => b ^ 0x5a);
      const toGuest = pattern(100 << 10, 23);
      const sock = join(dir, "vsock.sock");
      // Small buffers, so both transfers run on credit updates.
      const device = new VsockDevice({ guestCid: GUEST_CID, bufferBytes: 32768 });
      let fromGuest: Promise<Uint8Array> | undefined;
      device.listen(HOST_PORT, (s) => {
        fromGuest = readAll(s).then((data) => {
          s.end(data.map((b) => b ^ 0x5a));
          return data;
        });
      });
      const closes: (VhostUserError | undefined)[] = [];
      const backend = new VhostUserVsockBackend(device, sock, {
        onConnectionClose: (e) => closes.push(e),
      });
      await backend.listening;
      let echoed: Promise<Uint8Array> | undefined;
      let result: Awaited<Awaited<ReturnType<typeof startGuest>>["result"]>;
      try {
        const guest = await startGuest({
          machine: "pc",
          kernel,
          sharedMemory: true,
          modules: ["virtio_pci", "vmw_vsock_virtio_transport"],
          files: [
            { kind: "file", path: "/bin/vsock-echo", data: program, mode: 0o755 },
            { kind: "file", path: "/payload.bin", data: payload },
          ],
          args: [
            "-chardev",
            `socket,id=c0,path=${sock}`,
            "-device",
            "vhost-user-vsock-pci,chardev=c0",
          ],
          script: [
            `vsock-echo server ${GUEST_PORT} &`,
            "srv=$!",
            `vsock-echo client ${HOST_PORT} /payload.bin /tmp/reply.bin`,
            'echo "reply=$(md5sum /tmp/reply.bin | cut -d" " -f1)"',
            "wait $srv",
            "",
          ].join("\n"),
          onLine: (line) => {
            // The guest listens: connect to it from the host.
            if (line.startsWith("server: listening") && echoed === undefined) {
              const s = device.connect(GUEST_PORT);
              echoed = readAll(s);
              s.on("connect", () => s.end(toGuest));
            }
          },
          timeoutMs: 180_000,
        });
        result = await guest.result;
      } finally {
        await backend.close();
      }
      const closeErrors = closes.filter((e) => e !== undefined).map((e) => e.message);
      const why = `${explainGuest(result, 40)}\n--- back-end ---\n${closeErrors.join("\n")}`;
      console.info(
        `[interop] vhost-user-vsock: ${Math.round(result.durationMs)} ms; device ${JSON.stringify(device.stats)}; QEMU sent ${JSON.stringify(backend.stats.requests)}`,
      );
      expect(result.timedOut, why).toBe(false);
      expect(result.guestExit, why).toBe(0);
      // Guest → host: our listener got the 256 KiB byte-exact; the guest got our reply.
      expect(fromGuest, why).toBeDefined();
      expect(md5(await fromGuest!)).toBe(md5(payload));
      expect(result.output, why).toContain(
        `client: sent ${payload.length} received ${reply.length}\n`,
      );
      expect(result.output, why).toContain(`reply=${md5(reply)}\n`);
      // Host → guest: the C program echoed our 100 KiB.
      expect(echoed, why).toBeDefined();
      expect(md5(await echoed!)).toBe(md5(toGuest));
      expect(result.output, why).toContain(`server: echoed ${toGuest.length}\n`);
      expect(device.stats.creditViolations).toBe(0);
      expect(closeErrors).toEqual([]);
    },
    BOOT_TEST_TIMEOUT,
  );
});
