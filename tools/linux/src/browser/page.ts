// The page of `pnpm linux --browser`: the same Debian i686 guest as `pnpm linux`, in v86 in a
// browser tab, on virtio-ts devices: /dev/vda is a BlkDevice over a MemoryDisk filled from the
// image over fetch, eth0 a NetDevice on an in-page Switch where a TypeScript peer (our NetDriver
// over our transport to our NetDevice) answers ARP and ping at 10.0.2.2; the serial console is
// an xterm.js terminal. Bundled by esbuild in `browser-server.ts`; runs only in a browser.
import { MemoryDisk } from "@virtio-ts/backend-disk";
import { Switch } from "@virtio-ts/backend-net";
import { BlkDevice, NetDevice } from "@virtio-ts/devices";
import { V86VirtioBus } from "@virtio-ts/v86";
import { Terminal } from "@xterm/xterm";
import { PingPeer } from "../peer.js";

/** What the server tells the page (`/config.json`). */
export interface BrowserConfig {
  /** URL of v86's ES module (`libv86.mjs`). */
  readonly v86Module: string;
  /** URL of `v86.wasm`. */
  readonly v86Wasm: string;
  /** URLs of SeaBIOS, its VGA BIOS, the kernel, the initramfs and the disk image. */
  readonly bios: string;
  /** See `bios`. */
  readonly vgaBios: string;
  /** See `bios`. */
  readonly kernel: string;
  /** See `bios`. */
  readonly initrd: string;
  /** See `bios`. */
  readonly disk: string;
  /** Kernel command line. */
  readonly cmdline: string;
  /** Guest RAM in bytes. */
  readonly memoryBytes: number;
}

/** What the page exposes on `window.virtioTs` (for a person in the console, and for tests). */
export interface PageState {
  /** Phase: loading, booting, running, off, failed. */
  phase: string;
  /** Serial lines so far. */
  readonly lines: string[];
  /** ICMP echo requests the in-page peer answered. */
  echoReplies: number;
  /** Requests the virtio-blk device served. */
  blkRequests: number;
  /** Frames the virtio-net device moved (both ways). */
  netFrames: number;
  /** The error, when the phase is failed. */
  error: string | undefined;
}

interface V86Like {
  add_listener(event: string, fn: (arg: unknown) => void): void;
  serial0_send(text: string): void;
  run(): void;
  v86?: unknown;
}

const state: PageState = {
  phase: "loading",
  lines: [],
  echoReplies: 0,
  blkRequests: 0,
  netFrames: 0,
  error: undefined,
};
(globalThis as unknown as { virtioTs: PageState }).virtioTs = state;

const status = document.getElementById("status") as HTMLElement;
const show = (): void => {
  status.textContent =
    `${state.phase} · /dev/vda: ${state.blkRequests} requests · eth0: ${state.netFrames} frames · ` +
    `peer 10.0.2.2 answered ${state.echoReplies} pings` +
    (state.error === undefined ? "" : ` · ${state.error}`);
};

async function bytes(url: string): Promise<ArrayBuffer> {
  const r = await fetch(url);
  if (!r.ok) throw new Error(`GET ${url}: ${r.status}`);
  return r.arrayBuffer();
}

async function main(): Promise<void> {
  const term = new Terminal({ convertEol: true, rows: 30, cols: 100, scrollback: 5000 });
  term.open(document.getElementById("term") as HTMLElement);
  const config = (await (await fetch("/config.json")).json()) as BrowserConfig;
  const { V86 } = (await import(config.v86Module)) as {
    V86: new (o: Record<string, unknown>) => V86Like;
  };
  // The disk: a MemoryDisk over the image's bytes, fetched whole.
  const disk = new MemoryDisk(new Uint8Array(await bytes(config.disk)), { synchronous: true });
  const sw = new Switch();
  const peer = new PingPeer(sw.createPort({ name: "peer" }));
  const blk = new BlkDevice(disk);
  const net = new NetDevice(sw.createPort({ name: "guest" }), {
    mac: Uint8Array.of(0x52, 0x54, 0, 0x12, 0x34, 0x56),
    txInterrupts: "coalesced",
  });
  state.phase = "booting";
  show();
  const emulator = new V86({
    wasm_path: config.v86Wasm,
    bios: { url: config.bios },
    vga_bios: { url: config.vgaBios },
    bzimage: { url: config.kernel },
    initrd: { url: config.initrd },
    cmdline: config.cmdline,
    memory_size: config.memoryBytes,
    net_device: { type: "none" },
    autostart: false,
    disable_keyboard: true,
    disable_mouse: true,
    disable_speaker: true,
  });
  emulator.add_listener("emulator-loaded", () => {
    const bus = V86VirtioBus.of(emulator as unknown as Parameters<typeof V86VirtioBus.of>[0]);
    bus.attach(blk, { name: "virtio-ts blk" });
    bus.attach(net, { name: "virtio-ts net" });
    emulator.run();
  });
  let partial = "";
  emulator.add_listener("serial0-output-byte", (arg) => {
    const b = arg as number;
    term.write(Uint8Array.of(b));
    if (b === 10) {
      // Counters first: whoever reads the state after a line (the exit marker) sees every
      // reply and request that happened before the guest printed it.
      state.echoReplies = peer.stats.echoReplies;
      state.blkRequests = blk.stats.requests;
      state.lines.push(partial.replace(/\r/g, ""));
      if (partial.includes("@@VIRTIO-TS-READY@@")) state.phase = "running";
      if (/reboot: (System halted|Power down)/.test(partial)) state.phase = "off";
      partial = "";
    } else partial += String.fromCharCode(b);
  });
  term.onData((d) => emulator.serial0_send(d));
  setInterval(() => {
    state.echoReplies = peer.stats.echoReplies;
    state.blkRequests = blk.stats.requests;
    state.netFrames = net.stats.txFrames + net.stats.rxFrames;
    show();
  }, 250);
}

main().catch((e: unknown) => {
  state.phase = "failed";
  state.error = e instanceof Error ? e.message : String(e);
  show();
});
