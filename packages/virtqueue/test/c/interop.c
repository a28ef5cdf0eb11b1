/*
 * C counterpart of c-interop.test.ts, written against <linux/virtio_ring.h> (vring_init,
 * vring_need_event, struct vring_desc, struct vring_used_elem). JS cannot share memory with a
 * process, so the guest memory image (IMG_SIZE bytes, guest address = file offset) is exchanged
 * through a file.
 *
 *   interop device IMG NUM DESC AVAIL USED EVT    act as the device on a ring our driver filled,
 *                                                 at explicitly placed areas
 *   interop device-legacy IMG NUM BASE ALIGN EVT  the same on a legacy contiguous ring that
 *                                                 vring_init lays out at BASE
 *   interop driver-build IMG                      act as the driver: build chains (two indirect)
 *   interop driver-check IMG                      check the used ring our device filled
 *
 * EVT >= 0: VIRTIO_F_EVENT_IDX, and the device asks to be kicked once the driver has made EVT
 * more buffers available than it consumed (avail_event = last + EVT). EVT < 0: no EVENT_IDX,
 * and the device sets VRING_USED_F_NO_NOTIFY.
 *
 * Everything the device does is printed, one line per chain, for the test to compare; a
 * violated driver rule makes the program exit non-zero with the rule on stderr.
 */
#include <linux/virtio_ring.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define IMG_SIZE 0x20000
/* vring_init aligns the used ring's host address, not its offset: the image must be page
 * aligned for guest address = offset to hold. */
static uint8_t img[IMG_SIZE] __attribute__((aligned(4096)));

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
static void fail(const char *what, unsigned a) {
	fprintf(stderr, "driver broke a rule: %s (%u)\n", what, a);
	exit(4);
}
static void *at(uint64_t addr, uint64_t len) {
	if (addr > IMG_SIZE || len > IMG_SIZE - addr) fail("buffer outside the image", (unsigned)addr);
	return img + addr;
}
static unsigned long num_arg(const char *s) { return strtoul(s, 0, 0); }

/* Walk one chain, validating it as a strict device would; write a pattern into writable bytes. */
static unsigned walk(struct vring *vr, uint16_t head, char *line, size_t cap) {
	struct vring_desc *table = vr->desc;
	unsigned max = vr->num, i = head, n = 0, wbytes = 0, sum = 0, indirect = 0, seen_write = 0;
	size_t pos = (size_t)snprintf(line, cap, "head=%u", head);
	for (;;) {
		if (i >= max) fail("next outside the table", i);
		struct vring_desc *d = &table[i];
		if (d->flags & ~(VRING_DESC_F_NEXT | VRING_DESC_F_WRITE | VRING_DESC_F_INDIRECT))
			fail("unknown descriptor flags", d->flags);
		if (d->flags & VRING_DESC_F_INDIRECT) {
			/* VIRTIO 1.3 §2.7.5.3.1 */
			if (indirect) fail("INDIRECT inside an indirect table", i);
			if (d->flags & VRING_DESC_F_NEXT) fail("INDIRECT together with NEXT", i);
			if (d->len == 0 || d->len % sizeof(struct vring_desc)) fail("indirect table length", d->len);
			max = d->len / sizeof(struct vring_desc);
			table = at(d->addr, d->len);
			i = 0;
			indirect = 1;
			pos += (size_t)snprintf(line + pos, cap - pos, " indirect=%u", max);
			continue;
		}
		uint8_t *buf = at(d->addr, d->len);
		if (d->flags & VRING_DESC_F_WRITE) {
			for (unsigned k = 0; k < d->len; k++) buf[k] = (uint8_t)(head + wbytes + k);
			wbytes += d->len;
			seen_write = 1;
			pos += (size_t)snprintf(line + pos, cap - pos, " w%u", d->len);
		} else {
			if (seen_write) fail("readable after writable (§2.7.4.2)", i); /* VIRTIO 1.3 §2.7.4.2 */
			for (unsigned k = 0; k < d->len; k++) sum += buf[k];
			pos += (size_t)snprintf(line + pos, cap - pos, " r%u", d->len);
		}
		if (++n > vr->num) fail("chain longer than the queue size", n); /* §2.7.5.3.1 */
		if (!(d->flags & VRING_DESC_F_NEXT)) break;
		i = d->next;
	}
	snprintf(line + pos, cap - pos, " sum=%u", sum);
	return wbytes;
}

static int device(struct vring *vr, int evt, const char *path) {
	uint16_t used_old = vr->used->idx, last = used_old;
	uint16_t avail_idx = vr->avail->idx;
	__atomic_thread_fence(__ATOMIC_ACQUIRE);
	if ((uint16_t)(avail_idx - last) > vr->num) fail("avail idx jumped", avail_idx);
	char line[1024];
	for (; last != avail_idx; last++) {
		uint16_t head = vr->avail->ring[last % vr->num];
		if (head >= vr->num) fail("avail head outside the table", head);
		unsigned wbytes = walk(vr, head, line, sizeof line);
		puts(line);
		struct vring_used_elem *e = &vr->used->ring[vr->used->idx % vr->num];
		e->id = head;
		e->len = wbytes;
		__atomic_thread_fence(__ATOMIC_RELEASE);
		vr->used->idx++;
	}
	/* The interrupt decision, after a full barrier (Linux: virtio_mb before reading used_event). */
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	uint16_t used_new = vr->used->idx;
	if (evt >= 0) {
		printf("avail_flags=%u used_event=%u interrupt=%d\n", vr->avail->flags, vring_used_event(vr),
		       vring_need_event(vring_used_event(vr), used_new, used_old));
		vr->used->flags = 0;
		vring_avail_event(vr) = (uint16_t)(last + evt);
	} else {
		printf("avail_flags=%u interrupt=%d\n", vr->avail->flags,
		       !(vr->avail->flags & VRING_AVAIL_F_NO_INTERRUPT));
		vr->used->flags = VRING_USED_F_NO_NOTIFY;
	}
	save(path);
	return 0;
}

/* Driver side: a legacy ring at 0 laid out by vring_init, num 8; data at 0x8000; tables at 0x9000. */
#define DNUM 8
static int driver_build(const char *path) {
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
	/* chain 3: a normal descriptor followed by an indirect one (§2.7.5.3.2: devices MUST handle
	 * it): desc 4 readable 4 -> desc 6 -> table at 0x9100 of 2 writable entries. */
	struct vring_desc *u = (struct vring_desc *)(img + 0x9100);
	u[0] = (struct vring_desc){ 0x8700, 8, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 1 };
	u[1] = (struct vring_desc){ 0x8800, 8, VRING_DESC_F_WRITE, 0 };
	vr.desc[4] = (struct vring_desc){ 0x8204, 4, VRING_DESC_F_NEXT, 6 };
	vr.desc[6] = (struct vring_desc){ 0x9100, 2 * sizeof(struct vring_desc), VRING_DESC_F_INDIRECT, 0 };
	vr.avail->ring[0] = 0;
	vr.avail->ring[1] = 5;
	vr.avail->ring[2] = 7;
	vr.avail->ring[3] = 4;
	vring_used_event(&vr) = 1; /* interrupt once the used idx passes 1 */
	__atomic_thread_fence(__ATOMIC_RELEASE);
	vr.avail->idx = 4;
	printf("avail=%lu used=%lu\n", (unsigned long)((uint8_t *)vr.avail - img),
	       (unsigned long)((uint8_t *)vr.used - img));
	save(path);
	return 0;
}

static int driver_check(const char *path) {
	load(path);
	struct vring vr;
	vring_init(&vr, DNUM, img, 4096);
	uint16_t used = vr.used->idx;
	__atomic_thread_fence(__ATOMIC_ACQUIRE);
	printf("used_flags=%u used_idx=%u\n", vr.used->flags, used);
	for (unsigned i = 0; i < used; i++)
		printf("id=%u len=%u\n", vr.used->ring[i].id, vr.used->ring[i].len);
	printf("need_event(used_event=%u, new=%u, old=1)=%d\n", vring_used_event(&vr), used,
	       vring_need_event(vring_used_event(&vr), used, 1));
	/* Would this driver kick after making one more buffer available? */
	printf("avail_event=%u kick_next=%d\n", vring_avail_event(&vr),
	       vring_need_event(vring_avail_event(&vr), (uint16_t)(vr.avail->idx + 1), vr.avail->idx));
	printf("reply=%.*s\n", 13, (char *)(img + 0x8100));
	return 0;
}

int main(int argc, char **argv) {
	if (argc < 3) return 2;
	if (!strcmp(argv[1], "device") && argc == 8) {
		load(argv[2]);
		struct vring vr;
		vr.num = (unsigned)num_arg(argv[3]);
		vr.desc = at(num_arg(argv[4]), 16ul * vr.num);
		vr.avail = at(num_arg(argv[5]), 6ul + 2ul * vr.num);
		vr.used = at(num_arg(argv[6]), 6ul + 8ul * vr.num);
		return device(&vr, atoi(argv[7]), argv[2]);
	}
	if (!strcmp(argv[1], "device-legacy") && argc == 7) {
		load(argv[2]);
		struct vring vr;
		unsigned num = (unsigned)num_arg(argv[3]);
		unsigned long base = num_arg(argv[4]), align = num_arg(argv[5]);
		vring_init(&vr, num, at(base, vring_size(num, align)), align);
		printf("vring_init avail=%lu used=%lu size=%u\n",
		       (unsigned long)((uint8_t *)vr.avail - (img + base)),
		       (unsigned long)((uint8_t *)vr.used - (img + base)), vring_size(num, align));
		return device(&vr, atoi(argv[6]), argv[2]);
	}
	if (!strcmp(argv[1], "driver-build")) return driver_build(argv[2]);
	if (!strcmp(argv[1], "driver-check")) return driver_check(argv[2]);
	return 2;
}
