/*
 * C baseline for the split-ring benchmark: the same workload as tools/bench/src/split.ts
 * (queue size, batch, one readable 64-byte buffer per chain, the device answers length 0)
 * over a <linux/virtio_ring.h> vring, in one thread and across two busy-polling pthreads
 * with C11 release/acquire on the ring indices.
 *   split_ring single|threads QUEUE_SIZE BATCH OPS   -> prints ops/s
 */
#include <linux/virtio_ring.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static struct vring vr;
static unsigned num, batch;
static long total;
static uint8_t *data;

static double now(void) {
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

/* driver state */
static uint16_t d_avail, d_last_used, free_head;
static uint16_t next_free[32768];

static int drv_add(void) {
	if (free_head == num) return 0;
	uint16_t i = free_head;
	free_head = next_free[i];
	vr.desc[i].addr = (uint64_t)(uintptr_t)(data + 64 * i);
	vr.desc[i].len = 64;
	vr.desc[i].flags = 0;
	vr.avail->ring[d_avail++ % num] = i;
	return 1;
}
static void drv_publish(void) { __atomic_store_n(&vr.avail->idx, d_avail, __ATOMIC_RELEASE); }
static long drv_reap(void) {
	long n = 0;
	uint16_t used = __atomic_load_n(&vr.used->idx, __ATOMIC_ACQUIRE);
	while (d_last_used != used) {
		struct vring_used_elem *e = &vr.used->ring[d_last_used++ % num];
		if (e->id >= num) abort();
		next_free[e->id] = free_head;
		free_head = e->id;
		n++;
	}
	return n;
}

/* device state */
static uint16_t v_last_avail, v_used;
static long dev_run(void) {
	long n = 0;
	uint16_t avail = __atomic_load_n(&vr.avail->idx, __ATOMIC_ACQUIRE);
	if ((uint16_t)(avail - v_last_avail) > num) abort();
	while (v_last_avail != avail) {
		uint16_t head = vr.avail->ring[v_last_avail++ % num];
		if (head >= num) abort();
		struct vring_desc d = vr.desc[head];
		if (d.addr == 0 || d.len > 4096) abort();
		vr.used->ring[v_used % num].id = head;
		vr.used->ring[v_used % num].len = 0;
		v_used++;
		n++;
	}
	__atomic_store_n(&vr.used->idx, v_used, __ATOMIC_RELEASE);
	return n;
}

static void *device_thread(void *arg) {
	(void)arg;
	long done = 0;
	while (done < total) done += dev_run();
	return 0;
}

int main(int argc, char **argv) {
	if (argc < 5) return 2;
	num = atoi(argv[2]);
	batch = atoi(argv[3]);
	total = atol(argv[4]);
	void *mem = aligned_alloc(4096, vring_size(num, 4096));
	memset(mem, 0, vring_size(num, 4096));
	vring_init(&vr, num, mem, 4096);
	data = calloc(num, 64);
	for (unsigned i = 0; i < num; i++) next_free[i] = i + 1;
	double t0 = now();
	long sent = 0, reaped = 0;
	if (!strcmp(argv[1], "single")) {
		while (reaped < total) {
			for (unsigned b = 0; b < batch && sent < total && drv_add(); b++) sent++;
			drv_publish();
			dev_run();
			reaped += drv_reap();
		}
	} else {
		pthread_t t;
		pthread_create(&t, 0, device_thread, 0);
		while (reaped < total) {
			unsigned added = 0;
			for (; added < batch && sent < total && drv_add(); added++) sent++;
			if (added) drv_publish();
			reaped += drv_reap();
		}
		pthread_join(t, 0);
	}
	double dt = now() - t0;
	printf("%.0f\n", total / dt);
	return 0;
}
