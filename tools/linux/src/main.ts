#!/usr/bin/env node
// pnpm linux [--disk IMAGE] [--run 'COMMAND'] [--verbose] [--timeout SECONDS]
import { parseArgs } from "node:util";
import { MissingAssetError } from "./assets.js";
import { DEFAULT_DISK_TEXT, type LinuxResult, startLinux } from "./guest.js";

const USAGE = `usage: pnpm linux [--disk IMAGE] [--run 'COMMAND'] [--verbose] [--timeout SECONDS]

Boots Debian's i686 Linux in the v86 emulator (in Node) with four virtio-ts devices on
virtio-pci, driven by the kernel's own drivers:
  /dev/vda    BlkDevice on a FileDisk over IMAGE (default: a temporary 16 MiB image whose
              first sector starts with "${DEFAULT_DISK_TEXT.trim()}")
  eth0        NetDevice on a virtio-ts Switch; 10.0.2.15/24, a TypeScript peer answers ARP
              and ping at 10.0.2.2
  /dev/hvc0   ConsoleDevice (what the guest writes there is printed as "hvc0: ...")
  /dev/hwrng  RngDevice
--run runs COMMAND with /bin/sh, prints its output, powers off and exits with its status.
Without --run the terminal is the guest's serial console (Ctrl-] quits).
--verbose also prints the boot log (on stderr). --timeout defaults to 300 s (0: none).`;

function fail(message: string, code: number): never {
  process.stderr.write(`linux: ${message}\n`);
  process.exit(code);
}

function summary(r: LinuxResult): string {
  const s = (ms: number | undefined) => (ms === undefined ? "-" : `${(ms / 1000).toFixed(1)} s`);
  const out = [
    `boot: ${s(r.bootMs)} to a shell with the drivers loaded (whole run ${s(r.totalMs)})`,
    "device   slot  irq   traps  interrupts  requests   | while the command ran: traps  interrupts  requests",
  ];
  for (const d of r.devices) {
    out.push(
      `${d.name.padEnd(8)} 0x${d.slot.toString(16).padStart(2, "0")}  ${String(d.irq ?? "-").padStart(3)}  ${String(d.traps).padStart(6)}  ${String(d.interrupts).padStart(10)}  ${String(d.requests).padStart(8)}   | ${String(d.commandTraps).padStart(27)}  ${String(d.commandInterrupts).padStart(10)}  ${String(d.commandRequests).padStart(8)}`,
    );
  }
  out.push("(requests: blk requests, net frames both ways, console bytes both ways, rng requests)");
  return `${out.join("\n")}\n`;
}

async function main(): Promise<void> {
  let args: ReturnType<typeof parse>;
  function parse() {
    return parseArgs({
      options: {
        disk: { type: "string" },
        run: { type: "string" },
        verbose: { type: "boolean", default: false },
        timeout: { type: "string" },
        help: { type: "boolean", short: "h", default: false },
      },
      allowPositionals: false,
    });
  }
  try {
    args = parse();
  } catch (e) {
    fail(`${(e as Error).message}\n${USAGE}`, 2);
  }
  const v = args.values;
  if (v.help) {
    process.stdout.write(`${USAGE}\n`);
    return;
  }
  const timeoutSeconds = v.timeout === undefined ? 300 : Number(v.timeout);
  if (!Number.isFinite(timeoutSeconds) || timeoutSeconds < 0) {
    fail(`--timeout must be a number of seconds >= 0, got ${v.timeout}`, 2);
  }
  const command = v.run;
  const interactive = command === undefined;
  const verbose = v.verbose === true;
  let guest: Awaited<ReturnType<typeof startLinux>>;
  try {
    guest = await startLinux({
      ...(v.disk !== undefined ? { disk: v.disk } : {}),
      ...(command !== undefined ? { command } : {}),
      timeoutSeconds,
      ...(interactive
        ? { onSerialByte: (b: number) => process.stdout.write(Uint8Array.of(b)) }
        : {}),
      onSerialLine: (line, phase) => {
        if (interactive) return;
        if (phase === "command") process.stdout.write(`${line}\n`);
        else if (verbose) process.stderr.write(`${line}\n`);
      },
      onConsoleLine: (line) => process.stdout.write(`hvc0: ${line}\n`),
    });
  } catch (e) {
    if (e instanceof MissingAssetError) fail(e.message, 2);
    throw e;
  }
  if (interactive && process.stdin.isTTY) {
    process.stdin.setRawMode(true);
    process.stdin.resume();
    process.stdin.on("data", (d: Buffer) => {
      if (d.includes(0x1d))
        guest.stop(); // Ctrl-]
      else guest.sendSerial(d.toString("latin1"));
    });
  } else if (interactive) {
    process.stdin.on("data", (d: Buffer) => guest.sendSerial(d.toString("latin1")));
  }
  const r = await guest.result;
  if (interactive && process.stdin.isTTY) process.stdin.setRawMode(false);
  process.stdin.pause();
  process.stderr.write(summary(r));
  switch (r.end) {
    case "exit":
      process.exit(r.exitCode ?? 1);
      break;
    case "poweroff":
    case "stopped":
      process.exit(interactive ? 0 : 1);
      break;
    case "panic":
      fail(`the guest kernel panicked; last 30 serial lines:\n${r.lastLines.join("\n")}`, 1);
      break;
    case "timeout":
      fail(
        `timed out after ${timeoutSeconds} s (--timeout); last 30 serial lines:\n${r.lastLines.join("\n")}`,
        124,
      );
  }
}

if (process.argv.includes("--browser")) {
  // pnpm linux --browser [--port N]: the same guest in a browser tab (browser-server.ts).
  const { serveBrowser } = await import("./browser-main.js");
  await serveBrowser(process.argv.slice(2));
} else {
  await main();
}
