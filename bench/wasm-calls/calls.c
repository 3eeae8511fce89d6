// The host-call benchmark's guest: N host calls of one kind in a tight loop, so the time per
// call is the hypervisor's cost (plain vs record vs replay). Kinds and their call class:
//   clock   clock_gettime(CLOCK_MONOTONIC)      input  (8 bytes of memory logged per call)
//   random  getentropy(16 bytes)                input  (16 bytes logged per call)
//   file    pwrite of 64 bytes into a file      local  (both replicas write their own file)
//   stdout  write(1, 2 bytes)                   output (held for the output rule, then sent)
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
  long n = argc > 1 ? atol(argv[1]) : 1000000;
  const char *kind = argc > 2 ? argv[2] : "clock";
  unsigned long long acc = 0;
  if (strcmp(kind, "clock") == 0) {
    struct timespec ts;
    for (long i = 0; i < n; i++) {
      clock_gettime(CLOCK_MONOTONIC, &ts);
      acc += (unsigned long long)ts.tv_nsec;
    }
  } else if (strcmp(kind, "random") == 0) {
    unsigned char b[16];
    for (long i = 0; i < n; i++) {
      getentropy(b, sizeof b);
      acc += b[0];
    }
  } else if (strcmp(kind, "file") == 0) {
    char buf[64];
    memset(buf, 'x', sizeof buf);
    int fd = open("calls.dat", O_CREAT | O_RDWR | O_TRUNC, 0644);
    if (fd < 0) return 2;
    for (long i = 0; i < n; i++) acc += (unsigned long long)pwrite(fd, buf, sizeof buf, (off_t)(i % 1024) * 64);
    close(fd);
  } else if (strcmp(kind, "stdout") == 0) {
    for (long i = 0; i < n; i++) acc += (unsigned long long)write(1, ".\n", 2);
  } else {
    fprintf(stderr, "usage: calls N clock|random|file|stdout\n");
    return 2;
  }
  printf("%s %ld acc=%llu\n", kind, n, acc);
  return 0;
}
