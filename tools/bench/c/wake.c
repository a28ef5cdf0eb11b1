// wake: the cost of waking a sleeping thread on this machine, the baseline of `pnpm bench wake`.
//
// Two pthreads ping-pong through two futex words (the Atomics.wait / Atomics.notify analogue):
// A sets word 0 and FUTEX_WAKEs B, then sleeps on word 1 until B does the same back. Every wake
// finds its peer asleep (or about to sleep), so each round trip is two cross-thread wake-ups:
// what a kick and an interrupt cost when the other side is idle.
//
// Build: gcc -O2 -pthread -o wake wake.c
// Usage: wake ROUNDS
// Prints: ROUNDS NS CPU_NS WAKE_NS (elapsed, process CPU of all threads, and the time spent inside
// FUTEX_WAKE summed over both threads).
#define _GNU_SOURCE
#include <linux/futex.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static _Atomic int words[2];
static long rounds;
static double wake_ns[2];

static double now(clockid_t c) {
  struct timespec t;
  clock_gettime(c, &t);
  return t.tv_sec * 1e9 + t.tv_nsec;
}

static void ring(int w, int who) {
  atomic_store(&words[w], 1);
  double a = now(CLOCK_MONOTONIC);
  syscall(SYS_futex, &words[w], FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
  wake_ns[who] += now(CLOCK_MONOTONIC) - a;
}

static void take(int w) {
  while (atomic_exchange(&words[w], 0) == 0) {
    syscall(SYS_futex, &words[w], FUTEX_WAIT_PRIVATE, 0, NULL, NULL, 0);
  }
}

static void *peer(void *arg) {
  (void)arg;
  for (long i = 0; i < rounds; i++) {
    take(0);
    ring(1, 1);
  }
  return NULL;
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: wake ROUNDS\n");
    return 2;
  }
  rounds = atol(argv[1]);
  pthread_t t;
  if (pthread_create(&t, NULL, peer, NULL) != 0) return 1;
  double cpu0 = now(CLOCK_PROCESS_CPUTIME_ID), t0 = now(CLOCK_MONOTONIC);
  for (long i = 0; i < rounds; i++) {
    ring(0, 0);
    take(1);
  }
  double ns = now(CLOCK_MONOTONIC) - t0, cpu = now(CLOCK_PROCESS_CPUTIME_ID) - cpu0;
  pthread_join(t, NULL);
  printf("%ld %.0f %.0f %.0f\n", rounds, ns, cpu, wake_ns[0] + wake_ns[1]);
  return 0;
}
