/*
 * For every power-of-two queue size 1..32768, prints "size avail used used_event avail_event
 * total": the byte offsets that Linux's vring_init places in a legacy contiguous split ring
 * aligned to 4096, relative to the ring start (used_event relative to the available ring,
 * avail_event relative to the used ring), and vring_size. From <linux/virtio_ring.h>.
 * Used by test/c-layout.test.ts to check legacySplitLayout and the event offsets.
 */
#include <stdio.h>
#include <stdlib.h>

#include <linux/virtio_ring.h>

int main(void) {
  for (unsigned n = 1; n <= 32768; n *= 2) {
    size_t bytes = vring_size(n, 4096);
    char *mem = aligned_alloc(4096, (bytes + 4095) / 4096 * 4096);
    if (mem == NULL) return 1;
    struct vring vr;
    vring_init(&vr, n, mem, 4096);
    printf("%u %td %td %td %td %zu\n", n, (char *)vr.avail - mem, (char *)vr.used - mem,
           (char *)&vring_used_event(&vr) - (char *)vr.avail,
           (char *)&vring_avail_event(&vr) - (char *)vr.used, bytes);
    free(mem);
  }
  return 0;
}
