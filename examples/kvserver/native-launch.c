/*
 * For native-test.sh only: plays the part of lockstep's host for a native
 * build of kvserver. Listens on 127.0.0.1:PORT, puts that socket at fd 4,
 * sets LOCKSTEP_LISTEN_FDS=1 and execs the server.
 *
 *   native-launch PORT SERVER [ARG]...
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv) {
  int s, one = 1;
  struct sockaddr_in a = {0};
  if (argc < 3) {
    fprintf(stderr, "usage: native-launch PORT SERVER [ARG]...\n");
    return 64;
  }
  s = socket(AF_INET, SOCK_STREAM, 0);
  setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  a.sin_family = AF_INET;
  a.sin_port = htons((unsigned short)atoi(argv[1]));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(s, (struct sockaddr *)&a, sizeof a) != 0 || listen(s, 128) != 0) {
    perror("native-launch: bind/listen");
    return 1;
  }
  if (s != 4) {
    if (dup2(s, 4) < 0) {
      perror("native-launch: dup2");
      return 1;
    }
    close(s);
  }
  setenv("LOCKSTEP_LISTEN_FDS", "1", 1);
  execv(argv[2], argv + 2);
  perror("native-launch: exec");
  return 1;
}
