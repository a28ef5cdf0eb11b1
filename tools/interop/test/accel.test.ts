import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import {
  chooseAccelerator,
  explainGuest,
  type GuestResult,
  type KvmProbeResult,
} from "../src/index.js";

// The accelerator choice with a fake KVM device node and a fake probe: a machine whose /dev/kvm
// opens but cannot boot Linux is simulated, whatever this machine's KVM does.
describe("chooseAccelerator", () => {
  let dir: string;
  let kvm: string;
  const saved = process.env.INTEROP_ACCEL;
  const kernel = {
    image: "/nonexistent/vmlinuz-test",
    version: "test",
    modulesDir: "/nonexistent",
  };

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), "virtio-ts-accel-"));
    kvm = join(dir, "kvm");
    await writeFile(kvm, "");
    delete process.env.INTEROP_ACCEL;
  });
  afterEach(async () => {
    if (saved === undefined) delete process.env.INTEROP_ACCEL;
    else process.env.INTEROP_ACCEL = saved;
    await rm(dir, { recursive: true, force: true });
  });

  const fake = (result: KvmProbeResult) => {
    const calls: number[] = [];
    return {
      calls,
      probe: async (timeoutMs: number) => {
        calls.push(timeoutMs);
        return result;
      },
    };
  };

  it("uses TCG and says why when /dev/kvm opens but the probe guest never reaches init", async () => {
    const p = fake({
      ok: false,
      ms: 8000,
      detail: 'killed after 8000 ms; last serial line: "Probing EDD"',
    });
    const choice = await chooseAccelerator({
      kernel,
      kvmDevice: kvm,
      cacheDir: dir,
      probe: p.probe,
      timeoutMs: 8000,
    });
    expect(choice.accel).toBe("tcg");
    expect(choice.reason).toBe(
      'KVM probe: no marker after 8.0 s (killed after 8000 ms; last serial line: "Probing EDD"), using TCG',
    );
    expect(p.calls).toEqual([8000]);
  });

  it("uses KVM when the probe guest reaches init in time, and says how long it took", async () => {
    const p = fake({ ok: true, ms: 1234, detail: "" });
    const choice = await chooseAccelerator({
      kernel,
      kvmDevice: kvm,
      cacheDir: dir,
      probe: p.probe,
    });
    expect(choice).toEqual({
      accel: "kvm",
      reason: "KVM probe: guest reached init in 1.2 s",
      cached: false,
    });
  });

  it("probes once per boot: a second decision reads the cached verdict without booting", async () => {
    const p = fake({ ok: false, ms: 3000, detail: "QEMU exited with 1" });
    await chooseAccelerator({ kernel, kvmDevice: kvm, cacheDir: dir, probe: p.probe });
    const again = await chooseAccelerator({
      kernel,
      kvmDevice: kvm,
      cacheDir: dir,
      probe: p.probe,
    });
    expect(p.calls).toHaveLength(1);
    expect(again.accel).toBe("tcg");
    expect(again.cached).toBe(true);
    const fresh = await chooseAccelerator({
      kernel,
      kvmDevice: kvm,
      cacheDir: dir,
      probe: p.probe,
      reprobe: true,
    });
    expect(p.calls).toHaveLength(2);
    expect(fresh.cached).toBe(false);
  });

  it("uses TCG without probing when the KVM device cannot be opened", async () => {
    const p = fake({ ok: true, ms: 1, detail: "" });
    const choice = await chooseAccelerator({
      kernel,
      kvmDevice: join(dir, "missing"),
      cacheDir: dir,
      probe: p.probe,
    });
    expect(choice.accel).toBe("tcg");
    expect(choice.reason).toContain("cannot be opened");
    expect(p.calls).toEqual([]);
  });

  it("takes a probe that throws as a failed probe, not as an error of the run", async () => {
    const choice = await chooseAccelerator({
      kernel,
      kvmDevice: kvm,
      cacheDir: dir,
      probe: async () => {
        throw new Error("spawn qemu-system-x86_64 ENOENT");
      },
    });
    expect(choice.accel).toBe("tcg");
    expect(choice.reason).toContain("spawn qemu-system-x86_64 ENOENT");
  });

  it("lets INTEROP_ACCEL force either accelerator without probing, and refuses other values", async () => {
    const p = fake({ ok: false, ms: 1, detail: "" });
    process.env.INTEROP_ACCEL = "kvm";
    expect(
      await chooseAccelerator({ kernel, kvmDevice: kvm, cacheDir: dir, probe: p.probe }),
    ).toEqual({
      accel: "kvm",
      reason: "INTEROP_ACCEL=kvm forces it",
      cached: false,
    });
    process.env.INTEROP_ACCEL = "tcg";
    expect((await chooseAccelerator({ kernel, kvmDevice: kvm, probe: p.probe })).accel).toBe("tcg");
    process.env.INTEROP_ACCEL = "hvf";
    await expect(chooseAccelerator({ kernel, kvmDevice: kvm, probe: p.probe })).rejects.toThrow(
      /INTEROP_ACCEL must be "kvm" or "tcg"/,
    );
    expect(p.calls).toEqual([]);
  });
});

describe("explainGuest", () => {
  it("names the ending, the accelerator and its reason, and quotes the last serial lines and stderr", () => {
    const log = Array.from({ length: 40 }, (_, i) => `line ${i}`).join("\n");
    const r: GuestResult = {
      log,
      stderr: "qemu: warning: something\n",
      qemuExit: null,
      signal: "SIGKILL",
      guestExit: undefined,
      timedOut: true,
      durationMs: 60_000.4,
      argv: [],
      accel: "kvm",
      accelReason: "INTEROP_ACCEL=kvm forces it",
      output: "",
    };
    const text = explainGuest(r).split("\n");
    expect(text[0]).toBe(
      "guest killed by the hang guard after 60000 ms; accelerator kvm (INTEROP_ACCEL=kvm forces it); script exit status never printed",
    );
    expect(text[1]).toMatch(
      /^hint: a guest that never reaches its script under KVM usually means this machine's KVM cannot run Linux/,
    );
    expect(text[2]).toBe("--- last 30 serial lines ---");
    expect(text[3]).toBe("line 10");
    expect(text[32]).toBe("line 39");
    expect(text.slice(33)).toEqual(["--- QEMU stderr ---", "qemu: warning: something"]);
  });

  it("gives no KVM hint for a TCG guest that exited on its own", () => {
    const r: GuestResult = {
      log: "Kernel panic - not syncing: VFS: Unable to mount root fs\n",
      stderr: "",
      qemuExit: 0,
      signal: null,
      guestExit: undefined,
      timedOut: false,
      durationMs: 4321,
      argv: [],
      accel: "tcg",
      accelReason: "INTEROP_ACCEL=tcg forces it",
      output: "",
    };
    expect(explainGuest(r).split("\n")).toEqual([
      "guest QEMU exited with code 0 after 4321 ms; accelerator tcg (INTEROP_ACCEL=tcg forces it); script exit status never printed",
      "--- last 1 serial lines ---",
      "Kernel panic - not syncing: VFS: Unable to mount root fs",
      "--- QEMU stderr ---",
      "(empty)",
    ]);
  });
});
