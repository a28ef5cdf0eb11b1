// An NbdServer in a child process (fixtures/nbd-server-child.mjs) for the hostile-client tests:
// attacks come over real sockets, and the parent reads the server's RSS and counters.
import { type ChildProcess, spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import type { NbdServerOptions, NbdServerStats } from "../../src/node.js";
import { buildPackage } from "./build.js";

/** What the child reports on a "stats" line. */
export interface ChildStats {
  /** Resident set size now (bytes). */
  readonly rss: number;
  /** Peak resident set size since the child started (VmHWM, bytes). */
  readonly peakRss: number;
  readonly heapUsed: number;
  /** Peak of `process.memoryUsage().arrayBuffers`, sampled every 20 ms. */
  readonly peakArrayBuffers: number;
  readonly stats: NbdServerStats;
  /** onConnectionError calls by NbdError code (or error name). */
  readonly errors: Record<string, number>;
}

export interface ServerChild {
  readonly port: number;
  readonly process: ChildProcess;
  /** Resolves with the exit code (or signal) if the child dies. */
  readonly exited: Promise<string>;
  stats(): Promise<ChildStats>;
  /** Close the server and wait for the child to exit (kills it after 5 s). */
  stop(): Promise<void>;
}

type ChildOptions = Omit<NbdServerOptions, "exports" | "onConnectionError">;

let built = false;

/**
 * Start a child serving one export named "disk": a MemoryDisk, or the image `file` through
 * FileDisk. The child's old space is capped at
 * 512 MiB, so a regression that grows without bound fails the test quickly instead of eating
 * the machine.
 */
export async function startServerChild(
  diskBytes: number,
  options: ChildOptions = {},
  file?: string,
): Promise<ServerChild> {
  if (!built) {
    buildPackage();
    built = true;
  }
  const fixture = fileURLToPath(new URL("../fixtures/nbd-server-child.mjs", import.meta.url));
  const child = spawn(
    process.execPath,
    ["--max-old-space-size=512", fixture, JSON.stringify({ diskBytes, file, options })],
    { stdio: ["pipe", "pipe", "inherit"] },
  );
  const exited = new Promise<string>((resolve) =>
    child.once("exit", (code, signal) => resolve(signal ?? String(code))),
  );
  const lines = createInterface({ input: child.stdout! });
  const queue: string[] = [];
  const wanting: ((l: string) => void)[] = [];
  lines.on("line", (l) => {
    const w = wanting.shift();
    if (w) w(l);
    else queue.push(l);
  });
  const next = (): Promise<string> =>
    Promise.race([
      new Promise<string>((resolve) => {
        const l = queue.shift();
        if (l !== undefined) resolve(l);
        else wanting.push(resolve);
      }),
      exited.then((how) => {
        throw new Error(`the NbdServer child exited (${how})`);
      }),
    ]);
  const { port } = JSON.parse(await next()) as { port: number };
  let chain: Promise<unknown> = Promise.resolve();
  return {
    port,
    process: child,
    exited,
    stats() {
      // One request at a time, so replies pair with requests.
      const p = chain.then(async () => {
        child.stdin!.write("stats\n");
        return JSON.parse(await next()) as ChildStats;
      });
      chain = p.catch(() => {});
      return p;
    },
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.stdin!.write("exit\n");
      const timer = setTimeout(() => child.kill("SIGKILL"), 5000);
      await exited;
      clearTimeout(timer);
    },
  };
}

/** Whether the child is still running. */
export function alive(c: ServerChild): boolean {
  return c.process.exitCode === null && c.process.signalCode === null;
}

/** Poll the child's stats until `ok` holds (or give up after `ms` and return the last). */
export async function statsWhen(
  c: ServerChild,
  ok: (s: ChildStats) => boolean,
  ms = 5000,
): Promise<ChildStats> {
  const until = performance.now() + ms;
  for (;;) {
    const s = await c.stats();
    if (ok(s) || performance.now() > until) return s;
    await new Promise((r) => setTimeout(r, 20));
  }
}
