// The JavaScript floor of the one-thread split-ring bench: the same round trip as
// split-workload.ts's runSingle and c/split_ring.c's run_single, written out by hand in one
// function with every piece of state in a local: no queue objects, no calls, no segment objects,
// no chain cursor. It does the work the C baseline does, with the same checks (the device
// validates every descriptor: loop, length, readable-after-writable, bounds, total, next; the
// driver checks every used id and length) and the same Atomics policy as the library (one
// Atomics load or store per batch for the index and event words, used.idx stored with Atomics
// per push in shared memory and plainly in an ArrayBuffer).
//
// It is not a ring implementation anyone should use (it trusts its own arguments, throws plain
// Errors and handles one chain shape); it prices what V8 itself charges for this work, so the
// bench can split "TypeScript / C" into "runtime floor / C" and "library / floor".
import {
  BATCH,
  DATA,
  layoutFor,
  MEM_SIZE,
  type Rate,
  READ_LEN,
  SIZE,
  WRITE_LEN,
  warmOps,
} from "./split-workload.js";

/**
 * One timed run of `total` round trips (the first fifth is warm-up) over fresh memory.
 * `deferred`: the device stores used.idx once per batch, after the pushes, instead of per push
 * (the library's `use` + `publishUsed`).
 */
export function runFloor(
  shared: boolean,
  total: number,
  deferred = false,
): Rate & { notifications: number } {
  const buffer = shared ? new SharedArrayBuffer(MEM_SIZE) : new ArrayBuffer(MEM_SIZE);
  const L = layoutFor(SIZE);
  const desc = new Uint32Array(buffer, L.desc, 4 * SIZE);
  const avail = new Uint16Array(buffer, L.driver, 3 + SIZE);
  const used16 = new Uint16Array(buffer, L.device, 3 + 4 * SIZE);
  const used32 = new Uint32Array(buffer, L.device + 4, 2 * SIZE);
  const mask = SIZE - 1;
  const usedEventAt = 2 + SIZE;
  const availEventAt = 2 + 4 * SIZE;
  // Driver shadow.
  const next = new Uint16Array(SIZE);
  const descCount = new Uint16Array(SIZE);
  const offered = new Uint32Array(SIZE);
  const tokens = new Int32Array(SIZE);
  const inFlight = new Uint8Array(SIZE);
  for (let i = 0; i < SIZE; i++) next[i] = i + 1;
  let freeHead = 0;
  let numFree = SIZE;
  let availIdx = 0;
  let published = 0;
  let lastUsed = 0;
  // Device state.
  const devInFlight = new Uint8Array(SIZE);
  const devWritable = new Uint32Array(SIZE);
  const visited = new Uint32Array(SIZE);
  const addrs = new Float64Array(SIZE);
  const lens = new Uint32Array(SIZE);
  let epoch = 0;
  let lastAvail = 0;
  let usedIdx = 0;
  let signalled = 0;

  const warm = warmOps(total);
  let sent = 0;
  let reaped = 0;
  // Kicks plus interrupts decided (returned, so the decisions are not optimized away).
  let notifications = 0;
  let t0 = performance.now();
  let cpu0 = process.cpuUsage();
  while (reaped < total) {
    // Driver: add a batch of 2-descriptor chains, publish, decide the kick.
    for (let b = 0; b < BATCH && sent < total; b++, sent++) {
      if (numFree < 2) throw new Error("ring full");
      const head = freeHead;
      const second = next[head]!;
      let w = head << 2;
      desc[w] = DATA;
      desc[w + 1] = 0;
      desc[w + 2] = READ_LEN;
      desc[w + 3] = (1 | (second << 16)) >>> 0; // NEXT
      w = second << 2;
      desc[w] = DATA + 64;
      desc[w + 1] = 0;
      desc[w + 2] = WRITE_LEN;
      desc[w + 3] = 2; // WRITE
      freeHead = next[second]!;
      numFree -= 2;
      descCount[head] = 2;
      offered[head] = WRITE_LEN;
      tokens[head] = sent;
      inFlight[head] = 1;
      avail[2 + (availIdx & mask)] = head;
      availIdx = (availIdx + 1) & 0xffff;
    }
    const old = published;
    published = availIdx;
    Atomics.store(avail, 1, availIdx);
    const availEvent = Atomics.load(used16, availEventAt);
    if (((availIdx - availEvent - 1) & 0xffff) < ((availIdx - old) & 0xffff)) notifications++;
    // Device: pop and validate every chain, push it used.
    const seen = Atomics.load(avail, 1);
    const pending = (seen - lastAvail) & 0xffff;
    if (pending > SIZE) throw new Error("avail index jump");
    while (lastAvail !== seen) {
      const head = avail[2 + (lastAvail & mask)]!;
      lastAvail = (lastAvail + 1) & 0xffff;
      if (head >= SIZE || devInFlight[head] === 1) throw new Error("bad head");
      devInFlight[head] = 1;
      epoch = (epoch + 1) >>> 0;
      let count = 0;
      let readableBytes = 0;
      let writableBytes = 0;
      let idx = head;
      let seenWritable = false;
      for (;;) {
        if (visited[idx] === epoch) throw new Error("loop");
        visited[idx] = epoch;
        const w = idx << 2;
        const addr = desc[w + 1]! * 4294967296 + desc[w]!;
        const len = desc[w + 2]!;
        const fn = desc[w + 3]!;
        if ((fn & 4) !== 0) throw new Error("indirect");
        const writable = (fn & 2) !== 0;
        if (writable) seenWritable = true;
        else if (seenWritable) throw new Error("readable after writable");
        if (count >= SIZE) throw new Error("too long");
        if (!(addr >= 0 && len <= MEM_SIZE - addr)) throw new Error("out of bounds");
        addrs[count] = addr;
        lens[count] = len;
        count++;
        if (writable) writableBytes += len;
        else readableBytes += len;
        if (readableBytes + writableBytes > 0xffffffff) throw new Error("total");
        if ((fn & 1) === 0) break;
        if (fn >>> 16 >= SIZE) throw new Error("next");
        idx = fn >>> 16;
      }
      devWritable[head] = writableBytes;
      // push(head, writableBytes)
      if (devInFlight[head] !== 1 || writableBytes > devWritable[head]!) throw new Error("push");
      devInFlight[head] = 0;
      const slot = (usedIdx & mask) << 1;
      used32[slot] = head;
      used32[slot + 1] = writableBytes;
      usedIdx = (usedIdx + 1) & 0xffff;
      if (deferred) continue;
      if (shared) Atomics.store(used16, 1, usedIdx);
      else used16[1] = usedIdx;
    }
    if (deferred) {
      if (shared) Atomics.store(used16, 1, usedIdx);
      else used16[1] = usedIdx;
    }
    Atomics.store(used16, availEventAt, lastAvail);
    const oldUsed = signalled;
    signalled = usedIdx;
    const usedEvent = Atomics.load(avail, usedEventAt);
    if (((usedIdx - usedEvent - 1) & 0xffff) < ((usedIdx - oldUsed) & 0xffff)) notifications++;
    // Driver: reap everything.
    const done = Atomics.load(used16, 1);
    if (((done - lastUsed) & 0xffff) > SIZE) throw new Error("used index jump");
    while (lastUsed !== done) {
      const slot = (lastUsed & mask) << 1;
      const id = used32[slot]!;
      const len = used32[slot + 1]!;
      if (id >= SIZE || inFlight[id] !== 1 || len > offered[id]!) throw new Error("bad used");
      lastUsed = (lastUsed + 1) & 0xffff;
      inFlight[id] = 0;
      let tail = id;
      for (let i = descCount[id]! - 1; i > 0; i--) tail = next[tail]!;
      next[tail] = freeHead;
      freeHead = id;
      numFree += descCount[id]!;
      if (tokens[id] !== reaped) throw new Error("token out of order");
      if (++reaped === warm) {
        t0 = performance.now();
        cpu0 = process.cpuUsage();
      }
    }
    Atomics.store(avail, usedEventAt, lastUsed);
  }
  const ns = (performance.now() - t0) * 1e6;
  const cpu = process.cpuUsage(cpu0);
  return { ops: total - warm, ns, cpuNs: (cpu.user + cpu.system) * 1000, notifications };
}
