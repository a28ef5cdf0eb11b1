// The device side of a split virtqueue, in a Web Worker, over guest memory shared with the page
// (a SharedArrayBuffer). Kick and interrupt are SharedDoorbells: the worker sleeps in
// Atomics.wait on the kick word (allowed in a worker), serves every available chain (reversing
// the request bytes into the reply buffer) and rings the interrupt doorbell.
import { GuestMemoryMap } from "@virtio-ts/memory";
import { SharedDoorbell } from "@virtio-ts/transport";
import { DescriptorChain, NO_RING_FEATURES, SplitDeviceQueue } from "@virtio-ts/virtqueue";

self.onmessage = (event) => {
  const { buffer, layout, kick: kickHandle, irq: irqHandle, requests } = event.data;
  const memory = new GuestMemoryMap([{ guestBase: 0, size: buffer.byteLength, buffer }]);
  const kick = SharedDoorbell.from(kickHandle);
  const irq = SharedDoorbell.from(irqHandle);
  const queue = new SplitDeviceQueue(memory, layout, NO_RING_FEATURES);
  const chain = new DescriptorChain(queue.size);
  const request = new Uint8Array(64);
  let served = 0;
  while (served < requests) {
    if (!kick.waitSync(10_000)) {
      self.postMessage({ error: `no kick for 10 s after ${served} requests` });
      return;
    }
    kick.take();
    let any = false;
    do {
      while (queue.pop(chain)) {
        const got = chain.copyFromReadable(memory, 0, request);
        const reply = request.subarray(0, got).reverse();
        queue.push(chain.head, chain.copyToWritable(memory, 0, reply));
        served++;
        any = true;
      }
    } while (queue.enableNotifications());
    if (any && queue.needsInterrupt()) irq.ring();
  }
  self.postMessage({ served });
};
