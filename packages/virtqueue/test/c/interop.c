/*
 * C counterpart for c-interop.test.ts, written against <linux/virtio_ring.h>.
 * The guest memory image is exchanged through a file (JS cannot share memory with a process).
 *
 *   interop device IMG SIZE DESC AVAIL USED EVENT  -- act as the device on a ring our driver filled
 *   interop driver-build IMG                       -- act as the driver: build chains (one indirect)
 *   interop driver-check IMG                       -- check the used ring our device filled
 * Addresses in the image are guest-physical offsets from its start.
 */
#include <linux/virtio_ring.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define IMG_SIZE 0x20000
static uint8_t img[IMG_SIZE];

static void load(const char *path) {
	FILE *f = fopen(path, "rb");
	if (!f || fread(img, 1, IMG_SIZE, f) != IMG_SIZE) { perror("load"); exit(2); }
	fclose(f);
}
static void save(const char *path) {
	FILE *f = fopen(path, "wb");
	if (!f || fwrite(img, 1, IMG_SIZE, f) != IMG_SIZE) { perror("save"); exit(2); }
	fclose(f);
}
static void *at(uint64_t addr, uint32_t len) {
	if (addr > IMG_SIZE || len > IMG_SIZE - addr) { fprintf(stderr, "bad address %llx+%u\n", (unsigned long long)addr, len); exit(3); }
	return img + addr;
}

static int device(int argc, char **argv) {
	if (argc < 8) return 2;
	unsigned num = atoi(argv[3]);
	struct vring vr;
	vr.num = num;
	vr.desc = at(strtoul(argv[4], 0, 0), 16 * num);
	vr.avail = at(strtoul(argv[5], 0, 0), 6 + 2 * num);
	vr.used = at(strtoul(argv[6], 0, 0), 6 + 8 * num);
	uint16_t last = 0;
	while (last != vr.avail->idx) {
		uint16_t head = vr.avail->ring[last % num];
		struct vring_desc *table = vr.desc;
		unsigned i = head, max = num, nr = 0, nw = 0, rbytes = 0, wbytes = 0, sum = 0, n = 0;
		if (table[i].flags & VRING_DESC_F_INDIRECT) {
			max = table[i].len / sizeof(struct vring_desc);
			table = at(table[i].addr, table[i].len);
			i = 0;
		}
		for (;;) {
			struct vring_desc *d = &table[i];
			uint8_t *buf = at(d->addr, d->len);
			if (d->flags & VRING_DESC_F_WRITE) {
				for (unsigned k = 0; k < d->len; k++) buf[k] = (uint8_t)(head + wbytes + k);
				nw++; wbytes += d->len;
			} else {
				for (unsigned k = 0; k < d->len; k++) sum += buf[k];
				nr++; rbytes += d->len;
			}
			if (++n > max) { fprintf(stderr, "loop\n"); return 4; }
			if (!(d->flags & VRING_DESC_F_NEXT)) break;
			i = d->next;
		}
		printf("head=%u nr=%u nw=%u rbytes=%u wbytes=%u sum=%u\n", head, nr, nw, rbytes, wbytes, sum);
		vr.used->ring[vr.used->idx % num].id = head;
		vr.used->ring[vr.used->idx % num].len = wbytes;
		__atomic_thread_fence(__ATOMIC_RELEASE);
		vr.used->idx++;
		last++;
	}
	vring_avail_event(&vr) = (uint16_t)(last + atoi(argv[7]));
	save(argv[2]);
	return 0;
}

/* Driver side: legacy layout at 0, num 8; data at 0x8000; indirect table at 0x9000. */
#define DNUM 8
static int driver_build(char **argv) {
	memset(img, 0, IMG_SIZE);
	struct vring vr;
	vring_init(&vr, DNUM, img, 4096);
	const char *msg = "hello, device";
	memcpy(img + 0x8000, msg, strlen(msg));
	/* chain 0: desc 0 readable "hello, device", desc 1 writable 64 */
	vr.desc[0] = (struct vring_desc){ 0x8000, (uint32_t)strlen(msg), VRING_DESC_F_NEXT, 1 };
	vr.desc[1] = (struct vring_desc){ 0x8100, 64, VRING_DESC_F_WRITE, 0 };
	/* chain 1: desc 5 -> indirect table of 3: readable 4, readable 4, writable 16 */
	struct vring_desc *t = (struct vring_desc *)(img + 0x9000);
	memset(img + 0x8200, 1, 8);
	t[0] = (struct vring_desc){ 0x8200, 4, VRING_DESC_F_NEXT, 1 };
	t[1] = (struct vring_desc){ 0x8204, 4, VRING_DESC_F_NEXT, 2 };
	t[2] = (struct vring_desc){ 0x8300, 16, VRING_DESC_F_WRITE, 0 };
	vr.desc[5] = (struct vring_desc){ 0x9000, 3 * sizeof(struct vring_desc), VRING_DESC_F_INDIRECT, 0 };
	/* chain 2: desc 7 -> 3 -> 2, all writable */
	vr.desc[7] = (struct vring_desc){ 0x8400, 10, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 3 };
	vr.desc[3] = (struct vring_desc){ 0x8500, 20, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 2 };
	vr.desc[2] = (struct vring_desc){ 0x8600, 30, VRING_DESC_F_WRITE, 0 };
	vr.avail->ring[0] = 0;
	vr.avail->ring[1] = 5;
	vr.avail->ring[2] = 7;
	vring_used_event(&vr) = 1; /* interrupt once used idx passes 1 */
	__atomic_thread_fence(__ATOMIC_RELEASE);
	vr.avail->idx = 3;
	printf("avail=%lu used=%lu\n", (unsigned long)((uint8_t *)vr.avail - img), (unsigned long)((uint8_t *)vr.used - img));
	save(argv[2]);
	return 0;
}

static int driver_check(char **argv) {
	load(argv[2]);
	struct vring vr;
	vring_init(&vr, DNUM, img, 4096);
	printf("used_idx=%u\n", vr.used->idx);
	for (unsigned i = 0; i < vr.used->idx; i++)
		printf("id=%u len=%u\n", vr.used->ring[i].id, vr.used->ring[i].len);
	printf("need_event(used_event=%u, new=%u, old=1)=%d\n", vring_used_event(&vr), vr.used->idx, vring_need_event(vring_used_event(&vr), vr.used->idx, 1));
	printf("reply=%.*s\n", 13, (char *)(img + 0x8100));
	return 0;
}

int main(int argc, char **argv) {
	if (argc < 3) return 2;
	if (!strcmp(argv[1], "device")) { load(argv[2]); return device(argc, argv); }
	if (!strcmp(argv[1], "driver-build")) return driver_build(argv);
	if (!strcmp(argv[1], "driver-check")) return driver_check(argv);
	return 2;
}
