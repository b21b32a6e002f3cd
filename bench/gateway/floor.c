/*
 * floor: the cheapest possible HTTP/1.1 keep-alive "proxy", as a yardstick for bench/gateway/run.sh
 * (--floor). NOT a proxy anyone should run: it parses nothing, adds no header, routes nowhere but
 * to one backend, and assumes every request and answer fits one read (true for wrk's GET and the
 * echo backend's ~300-byte answer).
 *
 *   floor LISTEN_IP:PORT BACKEND_IP:PORT
 *
 * One thread, one epoll instance (level-triggered), one shared 64 KiB buffer. Each accepted client
 * connection gets its own upstream connection to the backend for its whole life (a perfect
 * keep-alive pool: never a connect per request). Bytes from either side are relayed to the other
 * with one recv and one send, so each request costs what any proxy's request must cost at least
 * on the socket API: recv from the client, send to the upstream, recv the answer, send it to the
 * client (4 system calls and 4 TCP segments), plus its share of epoll_wait. Its CPU time per
 * request is therefore the kernel's share of a proxied request with (almost) no user-space work,
 * and nginx's CPU time ÷ this one's is the highest req-per-CPU-second ratio against nginx that any
 * proxy making the same system calls can reach on this machine.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_FDS 65536

static int peer[MAX_FDS]; /* fd -> the fd on the other side of its pair, or -1 */

static void parse_addr(const char *s, struct sockaddr_in *a) {
    char host[64];
    const char *colon = strrchr(s, ':');
    if (!colon || (size_t)(colon - s) >= sizeof host) { fprintf(stderr, "bad address %s\n", s); exit(2); }
    memcpy(host, s, colon - s);
    host[colon - s] = 0;
    memset(a, 0, sizeof *a);
    a->sin_family = AF_INET;
    a->sin_port = htons((unsigned short)atoi(colon + 1));
    if (inet_pton(AF_INET, host, &a->sin_addr) != 1) { fprintf(stderr, "bad address %s\n", s); exit(2); }
}

static void close_pair(int fd) {
    int other = peer[fd];
    peer[fd] = -1;
    close(fd); /* closing removes it from the epoll set */
    if (other >= 0) { peer[other] = -1; close(other); }
}

/* Sends all of buf (blocking socket; on loopback with small answers one call). 0 or -1. */
static int send_all(int fd, const char *buf, size_t len) {
    while (len > 0) {
        ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);
        if (n < 0) { if (errno == EINTR) continue; return -1; }
        buf += n; len -= (size_t)n;
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: %s LISTEN_IP:PORT BACKEND_IP:PORT\n", argv[0]); return 2; }
    struct sockaddr_in listen_addr, backend;
    parse_addr(argv[1], &listen_addr);
    parse_addr(argv[2], &backend);
    signal(SIGPIPE, SIG_IGN);
    for (int i = 0; i < MAX_FDS; i++) peer[i] = -1;

    int one = 1;
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(lfd, (struct sockaddr *)&listen_addr, sizeof listen_addr) < 0 || listen(lfd, 1024) < 0) {
        perror("listen");
        return 1;
    }
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = lfd};
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);

    static char buf[65536];
    struct epoll_event events[256];
    for (;;) {
        int n = epoll_wait(ep, events, 256, -1);
        if (n < 0) { if (errno == EINTR) continue; perror("epoll_wait"); return 1; }
        for (int i = 0; i < n; i++) {
            int fd = events[i].data.fd;
            if (fd == lfd) {
                int cfd = accept4(lfd, NULL, NULL, 0); /* blocking socket: sends below block */
                if (cfd < 0) continue;
                int ufd = socket(AF_INET, SOCK_STREAM, 0);
                if (ufd < 0 || cfd >= MAX_FDS || ufd >= MAX_FDS ||
                    connect(ufd, (struct sockaddr *)&backend, sizeof backend) < 0) {
                    perror("upstream");
                    close(cfd);
                    if (ufd >= 0) close(ufd);
                    continue;
                }
                setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                setsockopt(ufd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                peer[cfd] = ufd;
                peer[ufd] = cfd;
                struct epoll_event c = {.events = EPOLLIN, .data.fd = cfd};
                struct epoll_event u = {.events = EPOLLIN, .data.fd = ufd};
                epoll_ctl(ep, EPOLL_CTL_ADD, cfd, &c);
                epoll_ctl(ep, EPOLL_CTL_ADD, ufd, &u);
                continue;
            }
            if (peer[fd] < 0) continue; /* closed earlier in this batch */
            ssize_t got = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
            if (got < 0 && (errno == EAGAIN || errno == EINTR)) continue;
            if (got <= 0 || send_all(peer[fd], buf, (size_t)got) < 0) close_pair(fd);
        }
    }
}
