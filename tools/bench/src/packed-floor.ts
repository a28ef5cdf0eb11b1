// The JavaScript floor of the one-thread packed-ring bench, as split-floor.ts is the split
// ring's: the same round trip as split-workload.ts's runSingle on a packed ring (2-descriptor
// lists, 16 readable and 64 writable bytes, queue size 256, batches of 32, EVENT_IDX), written
// out by hand in one function with every piece of state in a local: no queue objects, no calls,
// no segment objects, no chain cursor, no in-flight records for saveInFlight.
//
// Same checks as the split floor, in their packed form (the device: availability by the wrap
// counter, readable-after-writable, list length, bounds, total, buffer ID in range and not in
// flight; the driver: used ID in flight, used length), and the library's Atomics policy (one
// release store per published batch for the first head's flags; in shared memory an acquire
// load of each available head and of each used descriptor's flags, and a release store of
// each used descriptor's id/flags word; one Atomics load or store per batch for the event
// structures).
//
// It is not a ring implementation anyone should use; it tells whether a packed ring can beat a
// split ring in V8 at all, with everything inlined, beside the split floor of the same run.
import {
  BATCH,
  DATA,
  MEM_SIZE,
  packedLayoutFor,
  type Rate,
  READ_LEN,
  SIZE,
  WRITE_LEN,
  warmOps,
} from "./split-workload.js";

const F_NEXT = 1;
const F_WRITE = 2;
const F_INDIRECT = 4;
const F_AVAIL = 1 << 7;
const F_USED = 1 << 15;
/** The two wrap bits of a descriptor's flags. */
const F_BOTH = F_AVAIL | F_USED;
const EV_DESC = 2;

/** One timed run of `total` round trips (the first fifth is warm-up) over fresh memory. */
export function runPackedFloor(shared: boolean, total: number): Rate & { notifications: number } {
  const buffer = shared ? new SharedArrayBuffer(MEM_SIZE) : new ArrayBuffer(MEM_SIZE);
  const L = packedLayoutFor(SIZE);
  const desc = new Uint32Array(buffer, L.desc, 4 * SIZE);
  const descI32 = new Int32Array(buffer, L.desc, 4 * SIZE);
  const driverEv = new Uint16Array(buffer, L.driver, 2);
  const deviceEv = new Uint16Array(buffer, L.device, 2);
  const cycle = 2 * SIZE;
  // Driver state.
  const freeIds = new Uint16Array(SIZE);
  for (let i = 0; i < SIZE; i++) freeIds[i] = SIZE - 1 - i;
  let idTop = SIZE;
  const descCount = new Uint16Array(SIZE);
  const offered = new Uint32Array(SIZE);
  const tokens = new Int32Array(SIZE);
  const inFlight = new Uint8Array(SIZE);
  const pendingPos = new Uint16Array(SIZE);
  const pendingWord = new Int32Array(SIZE);
  let pendingCount = 0;
  let numFree = SIZE;
  let nextAvail = 0;
  let availWrap = true;
  let nextUsedD = 0;
  let usedWrapD = true;
  // Device state.
  const devInFlight = new Uint8Array(SIZE);
  const devDescCount = new Uint16Array(SIZE);
  const devWritable = new Uint32Array(SIZE);
  const addrs = new Float64Array(SIZE);
  const lens = new Uint32Array(SIZE);
  let devNext = 0;
  let devWrap = true;
  let usedPos = 0;
  let usedWrap = true;
  let usedSince = 0;
  // The driver asks for an interrupt at the next used position, the device for a kick at its
  // next available one (EVENT_IDX: DESC mode on both sides).
  // Both start at position 0 of the first lap (wrap counter 1).
  Atomics.store(driverEv, 0, 0x8000);
  Atomics.store(driverEv, 1, EV_DESC);
  Atomics.store(deviceEv, 0, 0x8000);
  Atomics.store(deviceEv, 1, EV_DESC);

  const warm = warmOps(total);
  let sent = 0;
  let reaped = 0;
  let notifications = 0;
  let t0 = performance.now();
  let cpu0 = process.cpuUsage();
  while (reaped < total) {
    // Driver: add a batch of 2-descriptor lists (heads kept for publish), publish, decide the kick.
    let added = 0;
    for (let b = 0; b < BATCH && sent < total; b++, sent++) {
      if (numFree < 2 || idTop === 0) throw new Error("ring full");
      const id = freeIds[--idTop]!;
      const avail = availWrap ? F_AVAIL : F_USED;
      let pos = nextAvail;
      let w = pos << 2;
      desc[w] = DATA;
      desc[w + 1] = 0;
      desc[w + 2] = READ_LEN;
      pendingPos[pendingCount] = pos;
      pendingWord[pendingCount] = id | ((avail | F_NEXT) << 16);
      pendingCount++;
      if (++pos === SIZE) {
        pos = 0;
        availWrap = !availWrap;
      }
      w = pos << 2;
      desc[w] = DATA + 64;
      desc[w + 1] = 0;
      desc[w + 2] = WRITE_LEN;
      desc[w + 3] = id | (((availWrap ? F_AVAIL : F_USED) | F_WRITE) << 16);
      if (++pos === SIZE) {
        pos = 0;
        availWrap = !availWrap;
      }
      nextAvail = pos;
      numFree -= 2;
      added += 2;
      descCount[id] = 2;
      offered[id] = WRITE_LEN;
      tokens[id] = sent;
      inFlight[id] = 1;
    }
    for (let j = pendingCount - 1; j > 0; j--) descI32[(pendingPos[j]! << 2) + 3] = pendingWord[j]!;
    Atomics.store(descI32, (pendingPos[0]! << 2) + 3, pendingWord[0]!);
    pendingCount = 0;
    if ((Atomics.load(deviceEv, 1) & 3) === EV_DESC) {
      const offWrap = Atomics.load(deviceEv, 0);
      const event = (offWrap & 0x7fff) + ((offWrap & 0x8000) !== 0 ? 0 : SIZE);
      const now = nextAvail + (availWrap ? 0 : SIZE);
      if ((now - event - 1 + cycle) % cycle < added) notifications++;
    }
    // Device: pop and validate every available list, push it used.
    for (;;) {
      const hw = (devNext << 2) + 3;
      let word = shared ? Atomics.load(descI32, hw) : descI32[hw]!;
      let flags = word >>> 16;
      // Available in lap `wrap`: AVAIL = wrap and USED = !wrap (§2.8.1), one compare.
      if ((flags & F_BOTH) !== (devWrap ? F_AVAIL : F_USED)) break;
      let pos = devNext;
      let w: boolean = devWrap;
      let n = 0;
      let count = 0;
      let readableBytes = 0;
      let writableBytes = 0;
      let seenWritable = false;
      for (;;) {
        n++;
        const base = pos << 2;
        const addr = desc[base + 1]! * 4294967296 + desc[base]!;
        const len = desc[base + 2]!;
        if ((flags & F_INDIRECT) !== 0) throw new Error("indirect");
        const writable = (flags & F_WRITE) !== 0;
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
        if (++pos === SIZE) {
          pos = 0;
          w = !w;
        }
        if ((flags & F_NEXT) === 0) break;
        if (n === SIZE) throw new Error("unterminated");
        // The rest of the list was written before the head's release: plain reads.
        word = descI32[(pos << 2) + 3]!;
        flags = word >>> 16;
        if ((flags & F_BOTH) !== (w ? F_AVAIL : F_USED)) {
          throw new Error("not available inside a list");
        }
      }
      const id = word & 0xffff;
      if (id >= SIZE || devInFlight[id] === 1) throw new Error("bad buffer ID");
      devInFlight[id] = 1;
      devDescCount[id] = n;
      devWritable[id] = writableBytes;
      devNext = pos;
      devWrap = w;
      // push(id, writableBytes)
      if (devInFlight[id] !== 1 || writableBytes > devWritable[id]!) throw new Error("push");
      devInFlight[id] = 0;
      const ub = usedPos << 2;
      desc[ub + 2] = writableBytes;
      const uw =
        id | (((usedWrap ? F_AVAIL | F_USED : 0) | (writableBytes > 0 ? F_WRITE : 0)) << 16);
      if (shared) Atomics.store(descI32, ub + 3, uw);
      else descI32[ub + 3] = uw;
      usedPos += devDescCount[id]!;
      if (usedPos >= SIZE) {
        usedPos -= SIZE;
        usedWrap = !usedWrap;
      }
      usedSince += devDescCount[id]!;
    }
    Atomics.store(deviceEv, 0, devNext | (devWrap ? 0x8000 : 0));
    if ((Atomics.load(driverEv, 1) & 3) === EV_DESC) {
      const offWrap = Atomics.load(driverEv, 0);
      const event = (offWrap & 0x7fff) + ((offWrap & 0x8000) !== 0 ? 0 : SIZE);
      const now = usedPos + (usedWrap ? 0 : SIZE);
      if ((now - event - 1 + cycle) % cycle < usedSince) notifications++;
    }
    usedSince = 0;
    // Driver: reap everything.
    for (;;) {
      const at = (nextUsedD << 2) + 3;
      const word = shared ? Atomics.load(descI32, at) : descI32[at]!;
      const flags = word >>> 16;
      // Used in lap `wrap`: AVAIL = USED = wrap.
      if ((flags & F_BOTH) !== (usedWrapD ? F_BOTH : 0)) break;
      const id = word & 0xffff;
      if (id >= SIZE || inFlight[id] !== 1) throw new Error("used ID not in flight");
      const len = (flags & F_WRITE) !== 0 ? desc[at - 1]! : 0;
      if (len > offered[id]!) throw new Error("used length");
      inFlight[id] = 0;
      nextUsedD += descCount[id]!;
      if (nextUsedD >= SIZE) {
        nextUsedD -= SIZE;
        usedWrapD = !usedWrapD;
      }
      numFree += descCount[id]!;
      freeIds[idTop++] = id;
      if (tokens[id] !== reaped) throw new Error("token out of order");
      if (++reaped === warm) {
        t0 = performance.now();
        cpu0 = process.cpuUsage();
      }
    }
    Atomics.store(driverEv, 0, nextUsedD | (usedWrapD ? 0x8000 : 0));
  }
  const ns = (performance.now() - t0) * 1e6;
  const cpu = process.cpuUsage(cpu0);
  return { ops: total - warm, ns, cpuNs: (cpu.user + cpu.system) * 1000, notifications };
}
