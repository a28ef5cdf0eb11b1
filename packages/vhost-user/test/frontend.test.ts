import { afterEach, beforeAll, describe, expect, it } from "vitest";
import {
  createSharedMemory,
  decodeMemoryTable,
  decodeVringState,
  EventFd,
  encodeConfig,
  encodeU64,
  encodeVringState,
  loadNative,
  mapSharedFd,
  VhostUserError,
  VhostUserFlag,
  type VhostUserFrontend,
  VhostUserProtocolFeature,
  VhostUserRequest,
} from "../src/index.js";
import { type FakeBackend, openFds, outcome, pair } from "./fake-backend.js";

const R = VhostUserRequest;
const REPLY_ACK = 1n << BigInt(VhostUserProtocolFeature.REPLY_ACK);

beforeAll(() => {
  // Fails (never skips) with "native addon not built: run …" when the addon is missing.
  loadNative();
});

const live: { fe: VhostUserFrontend; be: FakeBackend }[] = [];
function open(options = {}) {
  const p = pair(options);
  live.push(p);
  return p;
}
afterEach(() => {
  for (const p of live.splice(0)) {
    p.fe.close();
    p.be.conn.close();
  }
});

async function closeReason(fe: VhostUserFrontend): Promise<VhostUserError | undefined> {
  return new Promise((r) => fe.onClose(r));
}

describe("VhostUserFrontend with a well-behaved back-end", () => {
  it("resolves GET_FEATURES with the u64 the back-end replied", async () => {
    const { fe, be } = open();
    be.onRequest = (m) => be.reply(m.request, encodeU64(0x140000002n));
    expect(await fe.getFeatures()).toBe(0x140000002n);
    expect(be.received.map((m) => [m.request, m.flags, m.size])).toEqual([[1, 1, 0]]);
  });

  it("sends requests in call order and matches replies in that order", async () => {
    const { fe, be } = open();
    be.onRequest = (m) => {
      if (m.request === R.GET_FEATURES) be.reply(m.request, encodeU64(7n));
      if (m.request === R.GET_PROTOCOL_FEATURES) be.reply(m.request, encodeU64(9n));
    };
    const [a, , b] = await Promise.all([fe.getFeatures(), fe.setOwner(), fe.getProtocolFeatures()]);
    expect([a, b]).toEqual([7n, 9n]);
    expect(be.received.map((m) => m.request)).toEqual([
      R.GET_FEATURES,
      R.SET_OWNER,
      R.GET_PROTOCOL_FEATURES,
    ]);
  });

  it("with REPLY_ACK negotiated sets NEED_REPLY and waits for status 0 (vhost-user.rst REPLY_ACK)", async () => {
    const { fe, be } = open();
    be.onRequest = (m) => {
      if (m.flags & VhostUserFlag.NEED_REPLY) be.reply(m.request, encodeU64(0n));
    };
    await fe.setProtocolFeatures(REPLY_ACK);
    await fe.setVringNum(0, 256);
    const [spf, num] = be.received;
    expect(spf?.flags).toBe(VhostUserFlag.VERSION); // not yet negotiated when sent
    expect(num?.flags).toBe(VhostUserFlag.VERSION | VhostUserFlag.NEED_REPLY);
    expect(decodeVringState(num!.payload)).toEqual({ index: 0, num: 256 });
  });

  it("rejects a request the back-end refuses with a non-zero status as nack and stays open", async () => {
    const { fe, be } = open();
    be.onRequest = (m) => {
      if (m.request === R.SET_VRING_BASE) be.reply(m.request, encodeU64(22n));
      else if (m.flags & VhostUserFlag.NEED_REPLY) be.reply(m.request, encodeU64(0n));
      if (m.request === R.GET_FEATURES) be.reply(m.request, encodeU64(1n));
    };
    await fe.setProtocolFeatures(REPLY_ACK);
    const r = await outcome(fe.setVringBase(0, 0));
    expect(r.error).toBeInstanceOf(VhostUserError);
    expect((r.error as VhostUserError).code).toBe("nack");
    expect((r.error as VhostUserError).value).toBe(22);
    expect(fe.closed).toBe(false);
    expect(await fe.getFeatures()).toBe(1n);
  });

  it("passes the memory fd with SET_MEM_TABLE so the back-end maps the same pages", async () => {
    const { fe, be } = open();
    const shared = createSharedMemory({ size: 0x10000, guestBase: 0x100000 });
    try {
      await fe.setMemTable(shared.regions);
      const [m] = await be.waitFor(1);
      expect(m!.request).toBe(R.SET_MEM_TABLE);
      expect(m!.fds.length).toBe(1);
      expect(decodeMemoryTable(m!.payload)).toEqual([
        {
          guestPhysAddr: 0x100000n,
          memorySize: 0x10000n,
          userspaceAddr: shared.regions[0]!.userspaceAddr,
          mmapOffset: 0n,
        },
      ]);
      const view = new Uint8Array(mapSharedFd(m!.fds[0]!, 0x10000).buffer);
      shared.memory.writeU32(0x100010, 0xdeadbeef);
      expect([...view.subarray(0x10, 0x14)]).toEqual([0xef, 0xbe, 0xad, 0xde]);
      view[0x20] = 0x5a; // and the other way round
      expect(shared.memory.readU8(0x100020)).toBe(0x5a);
      loadNative().closeFd(m!.fds[0]!);
    } finally {
      shared.close();
    }
  });

  it("passes an eventfd with SET_VRING_KICK that signals across the socket", async () => {
    const { fe, be } = open();
    const kick = new EventFd();
    try {
      await fe.setVringKick(1, kick.fd);
      const [m] = await be.waitFor(1);
      expect(m!.payload).toEqual(Uint8Array.of(1, 0, 0, 0, 0, 0, 0, 0));
      const theirs = m!.fds[0]!;
      kick.signal();
      kick.signal();
      expect(loadNative().eventfdRead(theirs)).toBe(2n);
      loadNative().closeFd(theirs);
    } finally {
      kick.close();
    }
  });

  it("resolves GET_VRING_BASE with num and GET_CONFIG with the bytes asked for", async () => {
    const { fe, be } = open();
    be.onRequest = (m) => {
      if (m.request === R.GET_VRING_BASE)
        be.reply(m.request, encodeVringState({ index: 0, num: 42 }));
      if (m.request === R.GET_CONFIG)
        be.reply(m.request, encodeConfig({ offset: 0, flags: 0, data: Uint8Array.of(1, 2, 3, 4) }));
    };
    expect(await fe.getVringBase(0)).toBe(42);
    expect([...(await fe.getConfig(0, 4))]).toEqual([1, 2, 3, 4]);
  });
});

describe("VhostUserFrontend with a hostile back-end closes only that connection", () => {
  async function hostile(
    script: (be: FakeBackend) => void,
    request: (fe: VhostUserFrontend) => Promise<unknown> = (fe) => fe.getFeatures(),
  ): Promise<{ error: VhostUserError; reason: VhostUserError | undefined; bystander: bigint }> {
    const bad = open();
    const good = open();
    good.be.onRequest = (m) => good.be.reply(m.request, encodeU64(0x100000000n));
    bad.be.onRequest = () => script(bad.be);
    const reason = closeReason(bad.fe);
    const r = await outcome(request(bad.fe));
    expect(bad.fe.closed).toBe(true);
    // The other connection is untouched and still answers.
    const bystander = await good.fe.getFeatures();
    expect(good.fe.closed).toBe(false);
    return { error: r.error as VhostUserError, reason: await reason, bystander };
  }

  it("a reply with the wrong payload size closes with bad-size", async () => {
    const { error, reason, bystander } = await hostile((be) =>
      be.reply(R.GET_FEATURES, Uint8Array.of(1, 2, 3, 4)),
    );
    expect(error).toBeInstanceOf(VhostUserError);
    expect(error.code).toBe("bad-size");
    expect(error.value).toBe(4);
    expect(reason).toBe(error);
    expect(bystander).toBe(0x100000000n);
  });

  it("a reply with version bits 2 closes with bad-version naming the flags", async () => {
    const { error } = await hostile((be) =>
      be.rawMessage(R.GET_FEATURES, 0x2 | VhostUserFlag.REPLY, encodeU64(1n)),
    );
    expect(error.code).toBe("bad-version");
    expect(error.value).toBe(0x6);
    expect(error.message).toMatch(/version 2/);
  });

  it("a reply without the REPLY bit closes with bad-flags", async () => {
    const { error } = await hostile((be) =>
      be.rawMessage(R.GET_FEATURES, VhostUserFlag.VERSION, encodeU64(1n)),
    );
    expect(error.code).toBe("bad-flags");
    expect(error.value).toBe(1);
  });

  it("a reply carrying 9 fds closes with too-many-fds and leaks none of them", async () => {
    const before = openFds();
    const efds = Array.from({ length: 9 }, () => new EventFd());
    const { error } = await hostile((be) =>
      be.rawMessage(
        R.GET_FEATURES,
        0x5,
        encodeU64(1n),
        efds.map((e) => e.fd),
      ),
    );
    for (const e of efds) e.close();
    expect(error.code).toBe("too-many-fds");
    // Caught by the framing (the kernel cut the fds off: MSG_CTRUNC), not by the reply check.
    expect(error.message).toMatch(/more than 8 file descriptors/);
    // Every fd received (the kernel installs the 8 that fit) was closed; only the two
    // connections of the helper are still open until afterEach.
    for (const p of live.splice(0)) {
      p.fe.close();
      p.be.conn.close();
    }
    expect(openFds()).toBe(before);
  });

  it("a reply carrying one fd closes with too-many-fds (replies carry none) and closes it", async () => {
    const before = openFds();
    const efd = new EventFd();
    const { error } = await hostile((be) =>
      be.rawMessage(R.GET_FEATURES, 0x5, encodeU64(1n), [efd.fd]),
    );
    efd.close();
    expect(error.code).toBe("too-many-fds");
    expect(error.value).toBe(1);
    for (const p of live.splice(0)) {
      p.fe.close();
      p.be.conn.close();
    }
    expect(openFds()).toBe(before);
  });

  it("a header announcing a 1 MiB payload closes with payload-too-large before reading it", async () => {
    const { error } = await hostile((be) => {
      const h = new Uint8Array(12);
      const v = new DataView(h.buffer);
      v.setUint32(0, R.GET_FEATURES, true);
      v.setUint32(4, 0x5, true);
      v.setUint32(8, 1 << 20, true);
      be.raw(h);
    });
    expect(error.code).toBe("payload-too-large");
    expect(error.value).toBe(1 << 20);
  });

  it("a reply to a different request closes with unexpected-message", async () => {
    const { error } = await hostile((be) => be.reply(R.GET_QUEUE_NUM, encodeU64(1n)));
    expect(error.code).toBe("unexpected-message");
    expect(error.request).toBe(R.GET_QUEUE_NUM);
  });

  it("a message nobody asked for closes with unexpected-message", async () => {
    const bad = open();
    const reason = closeReason(bad.fe);
    bad.be.reply(R.GET_FEATURES, encodeU64(1n));
    const e = await reason;
    expect(e?.code).toBe("unexpected-message");
    expect(bad.fe.closed).toBe(true);
  });

  it("a GET_VRING_BASE reply for another ring closes with bad-reply", async () => {
    const { error } = await hostile(
      (be) => be.reply(R.GET_VRING_BASE, encodeVringState({ index: 1, num: 0 })),
      (fe) => fe.getVringBase(0),
    );
    expect(error.code).toBe("bad-reply");
    expect(error.value).toBe(1);
  });

  it("a GET_QUEUE_NUM reply of 0 queues closes with bad-reply", async () => {
    const { error } = await hostile(
      (be) => be.reply(R.GET_QUEUE_NUM, encodeU64(0n)),
      (fe) => fe.getQueueNum(),
    );
    expect(error.code).toBe("bad-reply");
  });

  it("a GET_CONFIG reply of another size closes with bad-size", async () => {
    const { error } = await hostile(
      (be) =>
        be.reply(R.GET_CONFIG, encodeConfig({ offset: 0, flags: 0, data: new Uint8Array(8) })),
      (fe) => fe.getConfig(0, 4),
    );
    expect(error.code).toBe("bad-size");
    expect(error.value).toBe(8);
  });

  it("a peer that hangs up in the middle of a reply closes with peer-closed", async () => {
    const { error } = await hostile((be) => {
      be.raw(Uint8Array.of(1, 0, 0, 0, 5, 0, 0, 0, 8, 0, 0, 0, 1, 2)); // 2 of 8 payload bytes
      be.conn.close();
    });
    expect(error.code).toBe("peer-closed");
    expect(error.message).toMatch(/middle of a message/);
  });

  it("a back-end that never replies closes with timeout after replyTimeoutMs", async () => {
    const bad = open({ replyTimeoutMs: 20 });
    const r = await outcome(bad.fe.getFeatures());
    expect((r.error as VhostUserError).code).toBe("timeout");
    expect(bad.fe.closed).toBe(true);
  });

  it("requests after the close are rejected with the close reason", async () => {
    const { fe, be } = open();
    be.onRequest = () => be.reply(R.GET_FEATURES, new Uint8Array(3));
    const first = await outcome(fe.getFeatures());
    const later = await outcome(fe.setOwner());
    expect(later.error).toBe(first.error);
  });
});

describe("VhostUserFrontend argument checks", () => {
  it("names the argument of a bad call", () => {
    const { fe } = open();
    expect(() => fe.getConfig(0, 0)).toThrow(/size/);
    expect(() => fe.setMemTable([])).toThrow(/regions/);
    expect(() => fe.setVringKick(256, undefined)).toThrow(/index/);
  });
});
