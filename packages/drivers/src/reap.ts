import type { DriverQueue } from "@virtio-ts/virtqueue";

/**
 * Reap every used buffer of `q` with used buffer notifications suppressed, then ask for them
 * again and go on reaping while the queue reports that more arrived in between (the re-check
 * that closes the race with a device using buffers just before it saw the request, VIRTIO 1.3
 * §2.7.10 / §2.8.10). Allocates nothing: pass a callback created once.
 *
 * @param q - the driver queue
 * @param onUsed - called with each buffer's token and used length, in reap order
 * @returns the number of buffers reaped
 * @throws RingError from the queue if the device corrupted the ring
 * @internal
 */
export function reapAll<T>(q: DriverQueue<T>, onUsed: (token: T, len: number) => void): number {
  let n = 0;
  for (;;) {
    q.disableInterrupts();
    for (let t = q.reap(); t !== undefined; t = q.reap()) {
      onUsed(t, q.lastLen);
      n++;
    }
    if (!q.enableInterrupts()) return n;
  }
}
