/*
 * Prints, as one JSON object, the value of every C expression listed in "checks.h":
 * sizeof/offsetof of the virtio structs that @virtio-ts/spec models and the constants it
 * defines, as the installed Linux UAPI headers (Debian package linux-libc-dev) have them.
 *
 * test/c-layout.test.ts writes checks.h from its table (one CHECK line per TypeScript
 * constant), compiles this file with gcc -I<that directory>, and compares the output with the
 * TypeScript values. Each line of checks.h reads:
 *
 *   CHECK("\"offsetof(struct vring_desc, len)\"", offsetof(struct vring_desc, len))
 *
 * where the first argument is the JSON key (the expression itself, JSON-quoted).
 */
#include <stddef.h>
#include <stdio.h>

#include <linux/virtio_balloon.h>
#include <linux/if_ether.h>
#include <linux/virtio_blk.h>
#include <linux/virtio_config.h>
#include <linux/virtio_console.h>
#include <linux/virtio_ids.h>
#include <linux/virtio_mmio.h>
#include <linux/virtio_net.h>
#include <linux/virtio_pci.h>
#include <linux/pci_regs.h>
#include <linux/virtio_ring.h>
#include <linux/virtio_vsock.h>
#include <linux/vm_sockets.h>

static int first = 1;

static void check(const char *key, unsigned long long value) {
  printf("%s\n  %s: %llu", first ? "" : ",", key, value);
  first = 0;
}

#define CHECK(key, expr) check(key, (unsigned long long)(expr));

int main(void) {
  printf("{");
#include "checks.h"
  printf("\n}\n");
  return 0;
}
