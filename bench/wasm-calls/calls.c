// The host-call benchmark's guest: N host calls of one kind in a tight loop, so the time per
// call is the hypervisor's cost (plain vs record vs replay). Kinds and their call class:
//   clock   clock_gettime(CLOCK_MONOTONIC)      input  (8 bytes of memory logged per call)
//   random  getentropy(16 bytes)                input  (16 bytes logged per call)
//   file    pwrite of 64 bytes into a file      local  (both replicas write their own file)
//   stdout  write(1, 2 bytes)                   output (held for the output rule, then sent)
//   open    open("d/e/calls.dat") + close       local  (path resolution: counted as one call)
//   stat    stat("d/e/calls.dat")               input  (path resolution and a logged filestat)
#include <fcntl.h>
#include <sys/stat.h>
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
  } else if (strcmp(kind, "open") == 0 || strcmp(kind, "stat") == 0) {
    if (mkdir("d", 0755) != 0 || mkdir("d/e", 0755) != 0) return 2;
    int fd = open("d/e/calls.dat", O_CREAT | O_WRONLY, 0644);
    if (fd < 0) return 2;
    close(fd);
    struct stat st;
    for (long i = 0; i < n; i++) {
      if (kind[0] == 's') {
        acc += stat("d/e/calls.dat", &st) == 0 ? (unsigned long long)st.st_nlink : 0;
      } else {
        fd = open("d/e/calls.dat", O_RDONLY);
        acc += (unsigned long long)close(fd) + 1;
      }
    }
  } else if (strcmp(kind, "stdout") == 0) {
    for (long i = 0; i < n; i++) acc += (unsigned long long)write(1, ".\n", 2);
  } else {
    fprintf(stderr, "usage: calls N clock|random|file|stdout|open|stat\n");
    return 2;
  }
  printf("%s %ld acc=%llu\n", kind, n, acc);
  return 0;
}
