// Helpers for the NBD tests: the real peers (qemu-nbd, qemu-io, qemu-img from Debian's
// qemu-utils) and free TCP ports. A missing tool fails the test with a message saying what to
// install; it is never skipped silently.
import { execFile, execFileSync } from "node:child_process";
import { readFile } from "node:fs/promises";
import { createServer } from "node:net";

/** Path of `tool`, or throw an Error naming the Debian package to install. */
export function requireTool(tool: "qemu-nbd" | "qemu-io" | "qemu-img"): string {
  try {
    return execFileSync("sh", ["-c", `command -v ${tool}`], { encoding: "utf8" }).trim();
  } catch {
    throw new Error(`${tool} is not installed: apt-get install -y qemu-utils (it is in .ci/run)`);
  }
}

/** A TCP port that was free a moment ago (listen on port 0, read it, close). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const a = s.address();
      const port = typeof a === "object" && a ? a.port : 0;
      s.close(() => resolve(port));
    });
  });
}

/** Run a program to completion; resolves with stdout, rejects with stderr in the message. */
export function run(cmd: string, args: readonly string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { encoding: "utf8", timeout: 30_000 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${cmd} ${args.join(" ")} failed: ${err.message}\n${stderr}`));
      else resolve(stdout);
    });
  });
}

/** A running qemu-nbd; `stop` kills exactly that process. */
export interface QemuNbd {
  readonly pid: number;
  stop(): void;
}

/**
 * Start `qemu-nbd --fork` on a raw image: the parent exits only once the socket listens, so no
 * polling is needed; the daemon's pid comes from `--pid-file`.
 */
export async function startQemuNbd(
  image: string,
  listen: { port: number } | { socket: string },
  pidFile: string,
  extra: readonly string[] = [],
): Promise<QemuNbd> {
  const qemuNbd = requireTool("qemu-nbd");
  const where =
    "port" in listen ? ["-p", String(listen.port), "-b", "127.0.0.1"] : ["-k", listen.socket];
  await run(qemuNbd, [
    "--fork",
    `--pid-file=${pidFile}`,
    "-t",
    "-e",
    "4",
    "-f",
    "raw",
    "-x",
    "disk0",
    ...where,
    ...extra,
    image,
  ]);
  const pid = Number((await readFile(pidFile, "utf8")).trim());
  return {
    pid,
    stop() {
      try {
        process.kill(pid, "SIGTERM");
      } catch {
        // already gone
      }
    },
  };
}
