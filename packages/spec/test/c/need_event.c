/*
 * Reads lines "event new old" (16-bit ring indices) from standard input and prints, for each,
 * 1 or 0: the result of Linux's vring_need_event from <linux/virtio_ring.h>.
 * Used by test/c-layout.test.ts to check vringNeedEvent.
 */
#include <stdio.h>

#include <linux/virtio_ring.h>

int main(void) {
  unsigned e, n, o;
  while (scanf("%u %u %u", &e, &n, &o) == 3) {
    printf("%d\n", vring_need_event((__u16)e, (__u16)n, (__u16)o));
  }
  return 0;
}
