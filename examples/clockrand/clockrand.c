/*
 * clockrand: reads the clocks and the random source, sleeps, prints what it
 * saw, and writes the same text to clockrand.out in the guest directory.
 *
 *   clockrand [N]     N iterations (default 5)
 *
 * Every value it prints comes from a non-deterministic input
 * (clock_time_get, random_get, poll_oneoff), so two runs differ; a host that
 * records the primary's inputs and replays them on the backup makes the
 * backup print exactly the primary's text. No floating point is printed.
 * The last line but one says whether CLOCK_MONOTONIC never went back and
 * whether each sleep lasted at least what was asked; the exit code is 0
 * unless a call fails.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static char text[1 << 16];
static size_t text_len;

/* Prints a line to stdout and keeps it for the checksum and the file. */
static void emit(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void emit(const char *fmt, ...) {
  va_list ap;
  int n;
  va_start(ap, fmt);
  n = vsnprintf(text + text_len, sizeof text - text_len, fmt, ap);
  va_end(ap);
  if (n < 0 || (size_t)n >= sizeof text - text_len) {
    fprintf(stderr, "clockrand: output buffer full\n");
    exit(1);
  }
  fputs(text + text_len, stdout);
  text_len += (size_t)n;
}

static uint64_t fnv1a64(const char *p, size_t n) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (size_t i = 0; i < n; i++) {
    h ^= (unsigned char)p[i];
    h *= 0x100000001b3ULL;
  }
  return h;
}

static int64_t ns(const struct timespec *t) { return (int64_t)t->tv_sec * 1000000000 + t->tv_nsec; }

static void hex(char *out, const unsigned char *p, size_t n) {
  static const char digits[] = "0123456789abcdef";
  for (size_t i = 0; i < n; i++) {
    out[2 * i] = digits[p[i] >> 4];
    out[2 * i + 1] = digits[p[i] & 15];
  }
  out[2 * n] = '\0';
}

int main(int argc, char **argv) {
  long iters = 5;
  int64_t prev_mono = 0;
  int mono_ok = 1, slept_ok = 1;
  uint64_t h;
  FILE *f;

  if (argc > 2) {
    fprintf(stderr, "usage: clockrand [N]\n");
    return 64;
  }
  if (argc == 2) {
    char *end;
    iters = strtol(argv[1], &end, 10);
    if (*argv[1] == '\0' || *end != '\0' || iters < 0 || iters > 1000) {
      fprintf(stderr, "clockrand: N must be 0..1000, got %s\n", argv[1]);
      return 64;
    }
  }

  {
    struct timespec res_rt, res_mono;
    if (clock_getres(CLOCK_REALTIME, &res_rt) != 0 || clock_getres(CLOCK_MONOTONIC, &res_mono) != 0) {
      fprintf(stderr, "clockrand: clock_getres: %s\n", strerror(errno));
      return 1;
    }
    emit("clockrand: %ld iterations, resolution realtime=%lldns monotonic=%lldns\n", iters,
         (long long)ns(&res_rt), (long long)ns(&res_mono));
  }

  for (long i = 0; i < iters; i++) {
    struct timespec rt, mono, nap, after;
    unsigned char rnd[16];
    char rhex[33];
    uint32_t a4;
    int64_t slept;

    if (clock_gettime(CLOCK_REALTIME, &rt) != 0 || clock_gettime(CLOCK_MONOTONIC, &mono) != 0) {
      fprintf(stderr, "clockrand: clock_gettime: %s\n", strerror(errno));
      return 1;
    }
    if (getentropy(rnd, sizeof rnd) != 0) { /* random_get */
      fprintf(stderr, "clockrand: getentropy: %s\n", strerror(errno));
      return 1;
    }
    hex(rhex, rnd, sizeof rnd);
    a4 = arc4random(); /* wasi-libc seeds it from random_get */
    if (i > 0 && ns(&mono) < prev_mono) mono_ok = 0;
    prev_mono = ns(&mono);

    /* 1..10 ms, chosen by the random bytes: a sleep of recorded length. */
    nap.tv_sec = 0;
    nap.tv_nsec = (long)(1 + rnd[0] % 10) * 1000000L;
    if (nanosleep(&nap, NULL) != 0) { /* poll_oneoff with a clock subscription */
      fprintf(stderr, "clockrand: nanosleep: %s\n", strerror(errno));
      return 1;
    }
    if (clock_gettime(CLOCK_MONOTONIC, &after) != 0) {
      fprintf(stderr, "clockrand: clock_gettime: %s\n", strerror(errno));
      return 1;
    }
    slept = ns(&after) - ns(&mono);
    if (slept < 0) mono_ok = 0;
    if (slept < ns(&nap)) slept_ok = 0;
    prev_mono = ns(&after);

    emit("iter %ld realtime=%lld.%09ld monotonic=%lld random=%s arc4random=%08x sleep=%ldms "
         "slept_ns=%lld\n",
         i, (long long)rt.tv_sec, (long)rt.tv_nsec, (long long)ns(&mono), rhex, (unsigned)a4,
         nap.tv_nsec / 1000000L, (long long)slept);
  }

  {
    time_t t = time(NULL);
    emit("time()=%lld monotonic_ordered=%s slept_at_least_asked=%s\n", (long long)t,
         mono_ok ? "yes" : "NO", slept_ok ? "yes" : "NO");
  }
  h = fnv1a64(text, text_len);
  emit("checksum fnv1a64=%016llx over %zu bytes\n", (unsigned long long)h, text_len);

  f = fopen("clockrand.out", "w"); /* path_open in the preopened guest dir */
  if (f == NULL) {
    fprintf(stderr, "clockrand: clockrand.out: %s\n", strerror(errno));
    return 1;
  }
  if (fwrite(text, 1, text_len, f) != text_len || fclose(f) != 0) {
    fprintf(stderr, "clockrand: writing clockrand.out: %s\n", strerror(errno));
    return 1;
  }
  if (fflush(stdout) != 0) return 1;
  return 0;
}
