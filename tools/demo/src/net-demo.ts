// The network part of the demo: two guests, each a NetDriver -> MmioDriverTransport -> MmioDevice
// -> NetDevice, plugged into two ports of one backend-net Switch. Guest A resolves B's IP with
// ARP and pings it; guest B's code answers both. Every frame is built by hand from bytes. Then
// the same exchange with guest B in a child Node process (`net-guest.ts`, built to
// dist/net-guest.js), its NIC reaching the parent's switch through a StreamTunnel (QEMU's
// `-netdev stream` framing over TCP loopback).
import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import { Switch } from "@virtio-ts/backend-net";
import {
  type StreamTunnel,
  StreamTunnelServer,
  type TunnelStats,
} from "@virtio-ts/backend-net/node";
import { type NetBackend, NetDevice } from "@virtio-ts/devices";
import { NetDriver, SlabAllocator } from "@virtio-ts/drivers";
import { createGuestMemory } from "@virtio-ts/memory";
import { EtherType } from "@virtio-ts/spec";
import { InThreadMmio, type MmioDevice, type MmioRegisterName } from "@virtio-ts/transport";

/** Guest A's MAC address (locally administered unicast). */
export const MAC_A: Uint8Array = Uint8Array.of(0x02, 0, 0, 0, 0, 0x0a);
/** Guest B's MAC address. */
export const MAC_B: Uint8Array = Uint8Array.of(0x02, 0, 0, 0, 0, 0x0b);
/** Guest A's IPv4 address, 10.0.0.1. */
export const IP_A: Uint8Array = Uint8Array.of(10, 0, 0, 1);
/** Guest B's IPv4 address, 10.0.0.2. */
export const IP_B: Uint8Array = Uint8Array.of(10, 0, 0, 2);
/** The ICMP echo identifier guest A uses ("vt"). */
export const PING_ID = 0x7674;
/** Bytes of ICMP echo data after the 8-byte ICMP header (what `ping` sends by default). */
export const PING_DATA = 56;

const ETHERTYPE_IPV4 = EtherType.IPV4;
const ETHERTYPE_ARP = EtherType.ARP;
const BROADCAST = new Uint8Array(6).fill(0xff);

// ---- frames, by hand ----

function ethernet(dst: Uint8Array, src: Uint8Array, type: number, length: number): Uint8Array {
  const f = new Uint8Array(length);
  f.set(dst, 0);
  f.set(src, 6);
  f[12] = type >> 8;
  f[13] = type & 0xff;
  return f;
}

/** RFC 1071 Internet checksum of `bytes[start, end)`. */
export function inetChecksum(bytes: Uint8Array, start: number, end: number): number {
  let sum = 0;
  for (let i = start; i + 1 < end; i += 2) sum += (bytes[i]! << 8) | bytes[i + 1]!;
  if ((end - start) & 1) sum += bytes[end - 1]! << 8;
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return ~sum & 0xffff;
}

function arp(
  op: 1 | 2,
  dst: Uint8Array,
  src: Uint8Array,
  spa: Uint8Array,
  tha: Uint8Array,
  tpa: Uint8Array,
): Uint8Array {
  // RFC 826 over Ethernet: htype 1, ptype IPv4, hlen 6, plen 4, then op and the four addresses.
  const f = ethernet(dst, src, ETHERTYPE_ARP, 42);
  f.set([0, 1, 0x08, 0x00, 6, 4, 0, op], 14);
  f.set(src, 22);
  f.set(spa, 28);
  f.set(tha, 32);
  f.set(tpa, 38);
  return f;
}

/**
 * An ARP request, broadcast: "who has `targetIp`? tell `senderIp`" (42 bytes, unpadded).
 * @param senderMac - the asking NIC
 * @param senderIp - its IPv4 address
 * @param targetIp - the address to resolve
 */
export function arpRequest(
  senderMac: Uint8Array,
  senderIp: Uint8Array,
  targetIp: Uint8Array,
): Uint8Array {
  return arp(1, BROADCAST, senderMac, senderIp, new Uint8Array(6), targetIp);
}

/**
 * An ICMP echo request (type 8) in an IPv4 packet (TTL 64, DF) with {@link PING_DATA} bytes of
 * data `0, 1, 2, ...`: 98 bytes, checksums filled in.
 * @param dstMac - next hop
 * @param srcMac - sender
 * @param srcIp - sender's IPv4 address
 * @param dstIp - destination IPv4 address
 * @param seq - sequence number
 */
export function icmpEchoRequest(
  dstMac: Uint8Array,
  srcMac: Uint8Array,
  srcIp: Uint8Array,
  dstIp: Uint8Array,
  seq: number,
): Uint8Array {
  const ipLen = 20 + 8 + PING_DATA;
  const f = ethernet(dstMac, srcMac, ETHERTYPE_IPV4, 14 + ipLen);
  // IPv4 header: version 4, IHL 5, total length, identification = seq, DF, TTL 64, protocol 1.
  f.set([0x45, 0, ipLen >> 8, ipLen & 0xff, seq >> 8, seq & 0xff, 0x40, 0, 64, 1, 0, 0], 14);
  f.set(srcIp, 26);
  f.set(dstIp, 30);
  const ipSum = inetChecksum(f, 14, 34);
  f[24] = ipSum >> 8;
  f[25] = ipSum & 0xff;
  f.set([8, 0, 0, 0, PING_ID >> 8, PING_ID & 0xff, seq >> 8, seq & 0xff], 34);
  for (let i = 0; i < PING_DATA; i++) f[42 + i] = i;
  const icmpSum = inetChecksum(f, 34, f.length);
  f[36] = icmpSum >> 8;
  f[37] = icmpSum & 0xff;
  return f;
}

const same = (a: Uint8Array, at: number, b: Uint8Array) => b.every((x, i) => a[at + i] === x);

/**
 * Guest B's network stack, all of it: the reply to an ARP request for `ip` or to an ICMP echo
 * request addressed to `ip`, or undefined for anything else. Checks lengths and checksums
 * before trusting a field.
 * @param frame - a received Ethernet frame
 * @param mac - this NIC's address
 * @param ip - this host's IPv4 address
 */
export function respond(
  frame: Uint8Array,
  mac: Uint8Array,
  ip: Uint8Array,
): Uint8Array | undefined {
  const type = (frame[12]! << 8) | frame[13]!;
  if (type === ETHERTYPE_ARP && frame.length >= 42) {
    const isRequest = frame[20] === 0 && frame[21] === 1;
    if (!isRequest || !same(frame, 14, Uint8Array.of(0, 1, 8, 0, 6, 4))) return undefined;
    if (!same(frame, 38, ip)) return undefined;
    return arp(2, frame.subarray(22, 28), mac, ip, frame.subarray(22, 28), frame.subarray(28, 32));
  }
  if (type === ETHERTYPE_IPV4 && frame.length >= 42 && frame[14] === 0x45 && frame[23] === 1) {
    const end = 14 + ((frame[16]! << 8) | frame[17]!);
    if (end > frame.length || end < 42 || !same(frame, 30, ip) || !same(frame, 0, mac)) {
      return undefined;
    }
    if (
      frame[34] !== 8 ||
      inetChecksum(frame, 14, 34) !== 0 ||
      inetChecksum(frame, 34, end) !== 0
    ) {
      return undefined;
    }
    const r = frame.slice(0, end);
    r.set(frame.subarray(6, 12), 0);
    r.set(mac, 6);
    r.set(ip, 26);
    r.set(frame.subarray(26, 30), 30);
    r[22] = 64;
    r[24] = 0;
    r[25] = 0;
    const ipSum = inetChecksum(r, 14, 34);
    r[24] = ipSum >> 8;
    r[25] = ipSum & 0xff;
    r[34] = 0; // echo reply
    r[36] = 0;
    r[37] = 0;
    const icmpSum = inetChecksum(r, 34, end);
    r[36] = icmpSum >> 8;
    r[37] = icmpSum & 0xff;
    return r;
  }
  return undefined;
}

/** `aa:bb:cc:dd:ee:ff` */
export function macString(b: Uint8Array): string {
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join(":");
}

const ipString = (b: Uint8Array) => b.join(".");

/**
 * One line about a frame: source and destination MAC, EtherType, then the ARP operation or the
 * ICMP type, id and sequence number, and the length.
 * @param f - an Ethernet frame
 */
export function describeFrame(f: Uint8Array): string {
  const type = (f[12]! << 8) | f[13]!;
  const head = `${macString(f.subarray(6, 12))} > ${macString(f.subarray(0, 6))}  0x${type.toString(16).padStart(4, "0")}`;
  let what = "";
  if (type === ETHERTYPE_ARP && f.length >= 42) {
    const op = (f[20]! << 8) | f[21]!;
    const tpa = ipString(f.subarray(38, 42));
    const spa = ipString(f.subarray(28, 32));
    what =
      op === 1
        ? `ARP request  who-has ${tpa} tell ${spa}`
        : op === 2
          ? `ARP reply    ${spa} is-at ${macString(f.subarray(22, 28))}`
          : `ARP op ${op}`;
  } else if (type === ETHERTYPE_IPV4 && f.length >= 42 && f[23] === 1) {
    const t = f[34]!;
    const name = t === 8 ? "echo request" : t === 0 ? "echo reply  " : `type ${t}`;
    const id = (f[38]! << 8) | f[39]!;
    const seq = (f[40]! << 8) | f[41]!;
    what = `ICMP ${name} ${ipString(f.subarray(26, 30))} > ${ipString(f.subarray(30, 34))} id 0x${id.toString(16)} seq ${seq}`;
  }
  return `${head}  ${what.padEnd(52)} ${String(f.length).padStart(3)} B`;
}

// ---- guests ----

/** Counters of one NIC, seen from its guest and its register file. */
export interface NicCounters {
  /** Frames the driver put on its transmit queue. */
  readonly txFrames: number;
  /** Frames the driver received. */
  readonly rxFrames: number;
  /** MMIO exits (register accesses) since the guest was set up. */
  readonly exits: number;
  /** Interrupts the guest took (runs of its handler). */
  readonly interrupts: number;
  /** The exits by register name. */
  readonly byRegister: Partial<Record<MmioRegisterName, number>>;
}

/** One guest: a NetDriver talking to a NetDevice through the virtio-mmio register file. */
export interface NetGuest {
  /** The guest's driver. */
  readonly driver: NetDriver;
  /** The register file: every access is one exit. */
  readonly mmio: MmioDevice;
  /** The device model. */
  readonly model: NetDevice;
  /** The NIC's counters now. */
  counters(): NicCounters;
}

/**
 * Build a guest (4 MiB of memory, queue size 64, 2 KiB buffers) whose NetDriver talks to a
 * NetDevice on `backend`, and zero the exit counters once it is set up, so they count only
 * traffic. The interrupt line is level-triggered; the handler (`NetDriver.onInterrupt`) runs on
 * the next turn of the event loop.
 * @param backend - where the NIC is plugged in (a switch port, a veth end)
 * @param mac - the NIC's address (config `mac`)
 */
export function createNetGuest(backend: NetBackend, mac: Uint8Array): NetGuest {
  const memory = createGuestMemory({ size: 0x400000 });
  const model = new NetDevice(backend, { mac, queueSize: 64 });
  const vm = new InThreadMmio(model, { memory });
  const nic = new NetDriver(vm.transport, memory, new SlabAllocator(0x100000, 2048, 256), {
    ringBase: 0x10000,
    queueSize: 64,
  });
  vm.line.handler = () => nic.onInterrupt();
  const mmio = vm.device;
  mmio.resetCounters();
  return {
    driver: nic,
    mmio,
    model,
    counters: () => ({
      txFrames: nic.stats.txFrames,
      rxFrames: nic.stats.rxFrames,
      exits: mmio.exits,
      interrupts: vm.line.taken,
      byRegister: mmio.exitCounts(),
    }),
  };
}

/**
 * Run guest B's side: answer every ARP request for `ip` and every ping to it, until the driver
 * stops or `signal` aborts.
 * @param guest - guest B
 * @param mac - its MAC
 * @param ip - its IPv4 address
 * @param signal - ends the loop
 */
export async function serveGuest(
  guest: NetGuest,
  mac: Uint8Array,
  ip: Uint8Array,
  signal?: AbortSignal,
): Promise<void> {
  const it = guest.driver.frames();
  const aborted = new Promise<IteratorResult<Uint8Array>>((resolve) => {
    if (signal?.aborted) resolve({ value: undefined, done: true });
    signal?.addEventListener("abort", () => resolve({ value: undefined, done: true }));
  });
  for (;;) {
    // A waiting next() never settles once nothing arrives: race it against the abort.
    const r = await Promise.race([it.next(), aborted]);
    if (r.done) break;
    const reply = respond(r.value, mac, ip);
    if (reply !== undefined) await guest.driver.send(reply);
  }
  await it.return?.();
}

/** Resolve with the next received frame, or reject after `ms`. */
async function nextFrame(
  it: AsyncIterator<Uint8Array>,
  ms: number,
  what: string,
): Promise<Uint8Array> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no ${what} within ${ms} ms`)), ms);
  });
  try {
    const r = await Promise.race([it.next(), timeout]);
    if (r.done) throw new Error(`receive ended before the ${what}`);
    return r.value;
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Guest A's side: ARP for {@link IP_B}, then one ping (seq 1) to the MAC the reply names.
 * @param a - guest A
 * @param log - gets one line per frame
 * @returns the four frames, in order: ARP request, ARP reply, echo request, echo reply
 */
export async function arpThenPing(a: NetGuest, log: (line: string) => void): Promise<Uint8Array[]> {
  const it = a.driver.frames();
  const frames: Uint8Array[] = [];
  const sent = async (f: Uint8Array) => {
    frames.push(f);
    log(`  A ->  ${describeFrame(f)}`);
    await a.driver.send(f);
  };
  const got = async (what: string, ok: (f: Uint8Array) => boolean) => {
    for (;;) {
      const f = await nextFrame(it, 2000, what);
      if (!ok(f)) continue; // not ours (none expected on this quiet network)
      frames.push(f);
      log(`  A <-  ${describeFrame(f)}`);
      return f;
    }
  };
  await sent(arpRequest(MAC_A, IP_A, IP_B));
  const reply = await got("ARP reply", (f) => f[12] === 8 && f[13] === 6 && f[21] === 2);
  const macB = reply.slice(22, 28);
  await sent(icmpEchoRequest(macB, MAC_A, IP_A, IP_B, 1));
  await got("echo reply", (f) => f[12] === 8 && f[13] === 0 && f[34] === 0);
  await it.return?.();
  return frames;
}

// ---- the demo ----

/** Part 3a: both guests in this process, one switch. */
export interface LocalResult {
  /** The four frames, as A sent and received them. */
  readonly frames: Uint8Array[];
  /** The switch's MAC table afterwards: address and port name. */
  readonly macTable: { readonly mac: string; readonly port: string }[];
  /** Frames the switch forwarded (known unicast) and flooded. */
  readonly switchCounts: { readonly forwarded: number; readonly flooded: number };
  /** Guest A's NIC. */
  readonly a: NicCounters;
  /** Guest B's NIC. */
  readonly b: NicCounters;
}

/** Part 3b: guest B in a child process, through a stream tunnel. */
export interface RemoteResult {
  /** The four frames, as A sent and received them. */
  readonly frames: Uint8Array[];
  /** The child's process id (not this process's). */
  readonly childPid: number;
  /** The switch's MAC table afterwards: address and port name. */
  readonly macTable: { readonly mac: string; readonly port: string }[];
  /** Guest A's NIC. */
  readonly a: NicCounters;
  /** Guest B's NIC, as the child reported it on exit. */
  readonly b: NicCounters;
  /** The parent's end of the tunnel. */
  readonly tunnel: TunnelStats;
}

/** Result of {@link runNetDemo}. */
export interface NetDemoResult {
  /** Both guests in this process. */
  readonly local: LocalResult;
  /** Guest B in a child process. */
  readonly remote: RemoteResult;
}

/** Options of {@link runNetDemo}. */
export interface NetDemoOptions {
  /** Where lines go (default `console.log`). */
  readonly log?: (line: string) => void;
}

/**
 * The path of the child's script: `dist/net-guest.js` of this tool (built by `pnpm build`),
 * whether this module runs from `src` or from `dist`.
 */
export const GUEST_SCRIPT: string = fileURLToPath(new URL("../dist/net-guest.js", import.meta.url));

function table(sw: Switch): { mac: string; port: string }[] {
  return sw.macTable().map((e) => ({ mac: e.mac, port: e.port.name }));
}

function printCounters(log: (l: string) => void, a: NicCounters, b: NicCounters): void {
  log("  NIC   tx frames  rx frames  MMIO exits  interrupts");
  for (const [n, c] of [
    ["A", a],
    ["B", b],
  ] as const) {
    log(
      `  ${n}     ${String(c.txFrames).padStart(9)}  ${String(c.rxFrames).padStart(9)}  ${String(c.exits).padStart(10)}  ${String(c.interrupts).padStart(10)}`,
    );
  }
}

async function runLocal(log: (l: string) => void): Promise<LocalResult> {
  log("virtio-ts demo, part 3: two virtio-net guests on one learning switch (VIRTIO 1.3 §5.1)");
  log("  3a. both guests here: NetDriver -> MMIO -> NetDevice -> Switch port, A pings B");
  const sw = new Switch();
  const a = createNetGuest(sw.createPort({ name: "guest-a" }), MAC_A);
  const b = createNetGuest(sw.createPort({ name: "guest-b" }), MAC_B);
  const stop = new AbortController();
  const serving = serveGuest(b, MAC_B, IP_B, stop.signal);
  const frames = await arpThenPing(a, log);
  // Let the last completions (A's transmit interrupt, B's refills) land before counting.
  await new Promise((r) => setImmediate(r));
  await new Promise((r) => setImmediate(r));
  stop.abort();
  await serving;
  const macTable = table(sw);
  log(`  switch MAC table: ${macTable.map((e) => `${e.mac} on ${e.port}`).join(", ")}`);
  const switchCounts = { forwarded: sw.stats.forwarded, flooded: sw.stats.flooded };
  log(
    `  switch: ${switchCounts.flooded} flooded (the broadcast), ${switchCounts.forwarded} forwarded`,
  );
  const ca = a.counters();
  const cb = b.counters();
  printCounters(log, ca, cb);
  return { frames, macTable, switchCounts, a: ca, b: cb };
}

function waitForLine(
  stream: NodeJS.ReadableStream,
  pattern: RegExp,
  exited: Promise<unknown>,
): Promise<RegExpExecArray> {
  return new Promise((resolve, reject) => {
    let out = "";
    const onData = (d: Buffer) => {
      out += d.toString();
      const m = pattern.exec(out);
      if (m) {
        stream.off("data", onData);
        resolve(m);
      }
    };
    stream.on("data", onData);
    void exited.then(() => reject(new Error(`child exited before printing ${pattern}: ${out}`)));
  });
}

async function runRemote(log: (l: string) => void): Promise<RemoteResult> {
  log("  3b. guest B in a child process, its NIC reaching the switch through a StreamTunnel (TCP)");
  const sw = new Switch();
  const a = createNetGuest(sw.createPort({ name: "guest-a" }), MAC_A);
  let tunnel: StreamTunnel | undefined;
  let connected!: () => void;
  const accepted = new Promise<void>((r) => {
    connected = r;
  });
  const server = await StreamTunnelServer.listen(
    { host: "127.0.0.1", port: 0 },
    {
      maxConnections: 1,
      onConnection(t) {
        tunnel = t;
        t.connect(sw.createPort({ name: "tunnel" }));
        connected();
      },
    },
  );
  const { port } = server.address as { port: number };
  const child = spawn(process.execPath, [GUEST_SCRIPT, String(port)], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  const exited = new Promise<number | null>((r) => child.once("exit", (code) => r(code)));
  try {
    await Promise.all([waitForLine(child.stdout!, /^ready\n/m, exited), accepted]);
    const frames = await arpThenPing(a, log);
    const statsLine = waitForLine(child.stdout!, /^stats (.*)\n/m, exited);
    await new Promise((r) => setImmediate(r));
    tunnel!.close(); // graceful end: the child sees its socket close, reports and exits
    const b = JSON.parse((await statsLine)[1]!) as NicCounters & { pid: number };
    const code = await exited;
    if (code !== 0) throw new Error(`child exited with ${code}`);
    const macTable = table(sw);
    log(`  switch MAC table: ${macTable.map((e) => `${e.mac} on ${e.port}`).join(", ")}`);
    log(
      `  the ping crossed processes: pid ${process.pid} (A, switch) <-> pid ${b.pid} (B), ` +
        `${tunnel!.stats.framesOut} frames out / ${tunnel!.stats.framesIn} in on the tunnel`,
    );
    const ca = a.counters();
    const cb: NicCounters = {
      txFrames: b.txFrames,
      rxFrames: b.rxFrames,
      exits: b.exits,
      interrupts: b.interrupts,
      byRegister: b.byRegister,
    };
    printCounters(log, ca, cb);
    return {
      frames,
      childPid: b.pid,
      macTable,
      a: ca,
      b: cb,
      tunnel: { ...tunnel!.stats },
    };
  } finally {
    if (child.exitCode === null) child.kill();
    await server.close().catch(() => {});
  }
}

/**
 * Run part 3 of the demo: the ARP + ping exchange between two guests on one switch, then with
 * guest B in a child process behind a stream tunnel.
 * @param options - where lines go
 * @throws Error if a reply does not arrive within 2 s or the child fails
 */
export async function runNetDemo(options: NetDemoOptions = {}): Promise<NetDemoResult> {
  const log = options.log ?? ((l: string) => console.log(l));
  const local = await runLocal(log);
  const remote = await runRemote(log);
  return { local, remote };
}
