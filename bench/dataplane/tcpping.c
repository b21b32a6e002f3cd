// tcpping: first-packet cost probe for the dataplane bench.
//
//   tcpping serve PORT[,PORT...]          accept and close forever (backlog 4096), one thread
//   tcpping connect IP PORT COUNT [WARMUP] time COUNT blocking connect()s, print percentiles
//
// Each connect() is timed with CLOCK_MONOTONIC around the blocking call: SYN out, SYN-ACK back,
// so the number is one round trip through the node's NAT rules (the first packet of a
// connection is the only one that walks them; conntrack handles the rest). Sockets are closed
// with SO_LINGER 0 (RST), so no TIME_WAIT piles up and every connection is a new conntrack entry.
// Output: one line "n=.. p50_us=.. p90_us=.. p99_us=.. mean_us=.. min_us=.. max_us=.. failed=..".
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int cmp(const void *a, const void *b) {
  long long x = *(const long long *)a, y = *(const long long *)b;
  return (x > y) - (x < y);
}

static int serve(char *ports) {
  struct pollfd fds[64];
  int n = 0;
  for (char *p = strtok(ports, ","); p && n < 64; p = strtok(NULL, ",")) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(p))};
    if (bind(fd, (struct sockaddr *)&a, sizeof a) || listen(fd, 4096)) {
      perror("bind/listen");
      return 1;
    }
    fds[n].fd = fd;
    fds[n++].events = POLLIN;
  }
  for (;;) {
    if (poll(fds, n, -1) < 0 && errno != EINTR) return 1;
    for (int i = 0; i < n; i++) {
      int c;
      while ((c = accept4(fds[i].fd, NULL, NULL, SOCK_NONBLOCK)) >= 0) close(c);
    }
  }
}

static int probe(const char *ip, int port, int count, int warmup) {
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
  if (inet_pton(AF_INET, ip, &a.sin_addr) != 1) return 2;
  long long *t = calloc(count, sizeof *t);
  int ok = 0, failed = 0;
  struct linger lg = {.l_onoff = 1, .l_linger = 0};
  for (int i = 0; i < count + warmup; i++) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    struct timeval tv = {.tv_sec = 2};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    long long t0 = now_ns();
    int r = connect(fd, (struct sockaddr *)&a, sizeof a);
    long long dt = now_ns() - t0;
    close(fd);
    if (r != 0) {
      failed++;
      if (failed > 20 && ok == 0) break;
      continue;
    }
    if (i >= warmup && ok < count) t[ok++] = dt;
  }
  if (ok == 0) {
    printf("n=0 failed=%d\n", failed);
    return 1;
  }
  qsort(t, ok, sizeof *t, cmp);
  long long sum = 0;
  for (int i = 0; i < ok; i++) sum += t[i];
#define PCT(q) (t[(int)((q) * (ok - 1) + 0.5)] / 1000.0)
  printf("n=%d p50_us=%.1f p90_us=%.1f p99_us=%.1f mean_us=%.1f min_us=%.1f max_us=%.1f failed=%d\n", ok,
         PCT(0.50), PCT(0.90), PCT(0.99), sum / 1000.0 / ok, t[0] / 1000.0, t[ok - 1] / 1000.0, failed);
  return 0;
}

int main(int argc, char **argv) {
  if (argc >= 3 && !strcmp(argv[1], "serve")) return serve(argv[2]);
  if (argc >= 5 && !strcmp(argv[1], "connect"))
    return probe(argv[2], atoi(argv[3]), atoi(argv[4]), argc > 5 ? atoi(argv[5]) : 50);
  fprintf(stderr, "usage: tcpping serve PORT[,PORT..] | tcpping connect IP PORT COUNT [WARMUP]\n");
  return 2;
}
