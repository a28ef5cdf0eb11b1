/**
 * Entry script of a vhost data-plane worker thread: imports the model factory named in
 * `workerData`, wraps the model in a {@link VhostBackend}, and serves control requests from the
 * parent port. Started by `VhostDevice`; not meant to be imported.
 *
 * @module
 */
import { parentPort, workerData } from "node:worker_threads";
import type { DeviceModel } from "@virtio-ts/transport";
import { VhostBackend } from "./backend.js";

interface WorkerData {
  readonly module: string;
  readonly export: string;
  readonly args: unknown;
  readonly pollUs: number;
  readonly usedBatch: number;
  readonly drainTimeoutMs: number;
}

const port = parentPort;
if (port === null) throw new Error("vhost-worker.js must run in a worker thread");
const data = workerData as WorkerData;

async function load(): Promise<DeviceModel> {
  const mod = (await import(data.module)) as Record<string, unknown>;
  const factory = mod[data.export];
  if (typeof factory !== "function") {
    throw new TypeError(`${data.module} has no function export ${data.export}`);
  }
  return (await factory(data.args)) as DeviceModel;
}

const backend = new VhostBackend(load(), (m) => port.postMessage(m), {
  pollUs: data.pollUs,
  usedBatch: data.usedBatch,
  drainTimeoutMs: data.drainTimeoutMs,
});
port.on("message", (m: unknown) => backend.handle(m));
