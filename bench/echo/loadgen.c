/*
 * loadgen.c - echo load generator for bench/echo (Linux, epoll).
 *
 * N TCP connections to 127.0.0.1:PORT, each with exactly one outstanding
 * request of SIZE bytes: write the request, read SIZE bytes back, record the
 * round trip's latency, send the next one.  A warm-up of W seconds, then a
 * measured window of D seconds; at the end of each phase no new request is
 * started and the outstanding ones are drained, so the server is idle at the
 * phase boundaries.  Prints one JSON line on stdout.
 *
 * With -S (sync, used by run.py) the phase boundaries are handshakes on
 * stdin/stdout, so the runner can sample the server's CPU accounting while
 * the server is idle, exactly around the measured window:
 *     loadgen -> "warm"        (warm-up done, connections idle)
 *     runner  -> "go"          (runner sampled /proc/PID/stat)
 *     loadgen -> {json}        (window done, connections idle, still open)
 *     runner  -> "quit" / EOF  (runner sampled again; loadgen closes)
 *
 * Latencies go into a log-linear histogram (128 sub-buckets per power of
 * two, i.e. < 0.8% relative error) kept in nanoseconds.
 *
 * Build: cc -O2 -pthread -o loadgen loadgen.c
 * Usage: loadgen -p PORT [-c CONNS] [-s SIZE] [-d SECONDS] [-w SECONDS]
 *                [-t THREADS] [-a CPULIST] [-T STALL_SECONDS] [-S]
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define SUB_BITS 7
#define SUB (1u << SUB_BITS)
#define NBUCKETS (SUB * 58u)
#define MAX_EVENTS 256

typedef struct {
    int fd;
    int want_out;     /* EPOLLOUT currently in the interest set */
    int active;       /* a request is outstanding */
    size_t sent;      /* bytes of the current request written */
    size_t recvd;     /* bytes of the current response read */
    uint64_t t_start; /* ns, when the current request started */
} conn_t;

typedef struct {
    pthread_t thread;
    int epfd;
    int nconns;
    conn_t *conns;
    uint64_t *hist;
    uint64_t rts;
    char err[256];
} worker_t;

static size_t g_size = 1024;
static unsigned char *g_msg;
static double g_stall = 5.0;
static pthread_barrier_t g_barrier;
static volatile uint64_t g_deadline;
static volatile int g_record;
static volatile int g_quit;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static inline unsigned hist_index(uint64_t v) {
    if (v < SUB) return (unsigned)v;
    unsigned shift = (unsigned)(63 - __builtin_clzll(v)) - SUB_BITS;
    return SUB * (shift + 1) + (unsigned)((v >> shift) - SUB);
}

static double hist_mid(unsigned idx) {
    if (idx < SUB) return (double)idx;
    unsigned shift = idx / SUB - 1;
    double low = (double)(((uint64_t)(idx % SUB) + SUB) << shift);
    return low + (double)(1ull << shift) / 2.0;
}

static void set_err(worker_t *w, const char *fmt, ...) {
    if (w->err[0]) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(w->err, sizeof w->err, fmt, ap);
    va_end(ap);
}

static int set_out(worker_t *w, conn_t *c, int on) {
    struct epoll_event ev = {.events = EPOLLIN | (on ? EPOLLOUT : 0), .data.ptr = c};
    if (epoll_ctl(w->epfd, EPOLL_CTL_MOD, c->fd, &ev) < 0) {
        set_err(w, "epoll_ctl: %s", strerror(errno));
        return -1;
    }
    c->want_out = on;
    return 0;
}

/* Write as much of the current request as the socket takes. */
static int push(worker_t *w, conn_t *c) {
    while (c->sent < g_size) {
        ssize_t n = write(c->fd, g_msg + c->sent, g_size - c->sent);
        if (n > 0) {
            c->sent += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            return c->want_out ? 0 : set_out(w, c, 1);
        }
        set_err(w, "write: %s", n < 0 ? strerror(errno) : "returned 0");
        return -1;
    }
    return c->want_out ? set_out(w, c, 0) : 0;
}

static int start(worker_t *w, conn_t *c, uint64_t t) {
    c->active = 1;
    c->sent = 0;
    c->recvd = 0;
    c->t_start = t;
    return push(w, c);
}

/* One phase: every connection runs request/response until the deadline;
 * then the outstanding requests are drained.  Returns 0 or -1 (w->err). */
static int run_phase(worker_t *w, unsigned char *rbuf) {
    struct epoll_event evs[MAX_EVENTS];
    const uint64_t deadline = g_deadline;
    const int record = g_record;
    const uint64_t stall_ns = (uint64_t)(g_stall * 1e9);
    int outstanding = w->nconns;
    uint64_t t = now_ns();
    uint64_t last_progress = t;

    for (int i = 0; i < w->nconns; i++)
        if (start(w, &w->conns[i], t) < 0) return -1;

    while (outstanding > 0) {
        int n = epoll_wait(w->epfd, evs, MAX_EVENTS, 200);
        if (n < 0) {
            if (errno == EINTR) continue;
            set_err(w, "epoll_wait: %s", strerror(errno));
            return -1;
        }
        if (n == 0) {
            if (now_ns() - last_progress > stall_ns) {
                set_err(w, "no response for %.1f s (server stalled?)", g_stall);
                return -1;
            }
            continue;
        }
        for (int i = 0; i < n; i++) {
            conn_t *c = evs[i].data.ptr;
            uint32_t e = evs[i].events;
            if ((e & EPOLLOUT) && c->sent < g_size) {
                if (push(w, c) < 0) return -1;
            }
            if (!(e & (EPOLLIN | EPOLLHUP | EPOLLERR))) continue;
            if (!c->active) {
                set_err(w, "unexpected data from the server");
                return -1;
            }
            size_t want = g_size - c->recvd;
            ssize_t r = read(c->fd, rbuf, want);
            if (r < 0) {
                if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) continue;
                set_err(w, "read: %s", strerror(errno));
                return -1;
            }
            if (r == 0) {
                set_err(w, "server closed the connection");
                return -1;
            }
            c->recvd += (size_t)r;
            if (c->recvd < g_size) continue;
            /* a full response: one round trip */
            t = now_ns();
            last_progress = t;
            if (record) {
                w->hist[hist_index(t - c->t_start)]++;
                w->rts++;
            }
            if (t < deadline) {
                if (start(w, c, t) < 0) return -1;
            } else {
                c->active = 0;
                outstanding--;
            }
        }
    }
    return 0;
}

static void *worker_main(void *arg) {
    worker_t *w = arg;
    unsigned char *rbuf = malloc(g_size);
    if (!rbuf) set_err(w, "out of memory");
    for (;;) {
        pthread_barrier_wait(&g_barrier); /* phase start */
        if (g_quit) break;
        if (!w->err[0]) run_phase(w, rbuf);
        pthread_barrier_wait(&g_barrier); /* phase end */
    }
    free(rbuf);
    return NULL;
}

static int parse_cpus(const char *s, cpu_set_t *set) {
    CPU_ZERO(set);
    while (*s) {
        char *end;
        long a = strtol(s, &end, 10), b;
        if (end == s) return -1;
        b = a;
        if (*end == '-') {
            s = end + 1;
            b = strtol(s, &end, 10);
            if (end == s) return -1;
        }
        for (long i = a; i <= b; i++) CPU_SET((int)i, set);
        s = end;
        if (*s == ',') s++;
        else if (*s) return -1;
    }
    return 0;
}

static void json_error(const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    for (char *p = msg; *p; p++)
        if (*p == '"' || *p == '\\' || (unsigned char)*p < 0x20) *p = ' ';
    printf("{\"error\": \"%s\"}\n", msg);
    fflush(stdout);
}

static double tv_s(struct timeval tv) { return (double)tv.tv_sec + (double)tv.tv_usec / 1e6; }

static int wait_line(const char *expect) {
    char line[64];
    if (!fgets(line, sizeof line, stdin)) return -1;
    return strncmp(line, expect, strlen(expect)) == 0 ? 0 : -1;
}

static void usage(void) {
    fprintf(stderr,
            "usage: loadgen -p PORT [-c CONNS] [-s SIZE] [-d SECONDS] [-w SECONDS]\n"
            "               [-t THREADS] [-a CPULIST] [-T STALL_SECONDS] [-S]\n");
    exit(2);
}

int main(int argc, char **argv) {
    int port = 0, nconns = 10, nthreads = 1, sync = 0, opt;
    double duration = 5.0, warmup = 1.0;
    const char *cpus = NULL;
    while ((opt = getopt(argc, argv, "p:c:s:d:w:t:a:T:S")) != -1) {
        switch (opt) {
        case 'p': port = atoi(optarg); break;
        case 'c': nconns = atoi(optarg); break;
        case 's': g_size = (size_t)strtoull(optarg, NULL, 10); break;
        case 'd': duration = atof(optarg); break;
        case 'w': warmup = atof(optarg); break;
        case 't': nthreads = atoi(optarg); break;
        case 'a': cpus = optarg; break;
        case 'T': g_stall = atof(optarg); break;
        case 'S': sync = 1; break;
        default: usage();
        }
    }
    if (port <= 0 || port > 65535 || nconns < 1 || g_size < 1 || duration <= 0 || warmup < 0 ||
        nthreads < 1 || g_stall <= 0)
        usage();
    if (nthreads > nconns) nthreads = nconns;
    signal(SIGPIPE, SIG_IGN);
    if (cpus) {
        cpu_set_t set;
        if (parse_cpus(cpus, &set) < 0 || sched_setaffinity(0, sizeof set, &set) < 0) {
            json_error("bad CPU list or sched_setaffinity failed: %s", cpus);
            return 1;
        }
    }

    g_msg = malloc(g_size);
    conn_t *conns = calloc((size_t)nconns, sizeof *conns);
    worker_t *ws = calloc((size_t)nthreads, sizeof *ws);
    if (!g_msg || !conns || !ws) {
        json_error("out of memory");
        return 1;
    }
    for (size_t i = 0; i < g_size; i++) g_msg[i] = (unsigned char)('a' + i % 26);

    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    for (int i = 0; i < nconns; i++) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
            json_error("connect to 127.0.0.1:%d (connection %d): %s", port, i, strerror(errno));
            return 1;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
        conns[i].fd = fd;
    }

    /* contiguous slices of the connection array, one per worker */
    int base = 0;
    for (int t = 0; t < nthreads; t++) {
        worker_t *w = &ws[t];
        w->nconns = nconns / nthreads + (t < nconns % nthreads);
        w->conns = conns + base;
        base += w->nconns;
        w->hist = calloc(NBUCKETS, sizeof *w->hist);
        w->epfd = epoll_create1(EPOLL_CLOEXEC);
        if (!w->hist || w->epfd < 0) {
            json_error("worker setup: %s", strerror(errno));
            return 1;
        }
        for (int i = 0; i < w->nconns; i++) {
            struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &w->conns[i]};
            if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, w->conns[i].fd, &ev) < 0) {
                json_error("epoll_ctl: %s", strerror(errno));
                return 1;
            }
        }
    }
    pthread_barrier_init(&g_barrier, NULL, (unsigned)nthreads + 1);
    for (int t = 0; t < nthreads; t++) pthread_create(&ws[t].thread, NULL, worker_main, &ws[t]);

    const char *err = NULL;
    int rc = 0;
    /* warm-up */
    if (warmup > 0) {
        g_record = 0;
        g_deadline = now_ns() + (uint64_t)(warmup * 1e9);
        pthread_barrier_wait(&g_barrier);
        pthread_barrier_wait(&g_barrier);
    }
    for (int t = 0; t < nthreads && !err; t++)
        if (ws[t].err[0]) err = ws[t].err;
    if (!err && sync) {
        printf("warm\n");
        fflush(stdout);
        if (wait_line("go") < 0) err = "runner went away before 'go'";
    }
    /* measured window */
    struct rusage ru0, ru1;
    uint64_t t0 = 0, t1 = 0;
    if (!err) {
        getrusage(RUSAGE_SELF, &ru0);
        g_record = 1;
        t0 = now_ns();
        g_deadline = t0 + (uint64_t)(duration * 1e9);
        pthread_barrier_wait(&g_barrier);
        pthread_barrier_wait(&g_barrier);
        t1 = now_ns();
        getrusage(RUSAGE_SELF, &ru1);
        for (int t = 0; t < nthreads && !err; t++)
            if (ws[t].err[0]) err = ws[t].err;
    }
    if (err) {
        json_error("%s", err);
        rc = 1;
    } else {
        uint64_t rts = 0, *hist = ws[0].hist;
        for (int t = 0; t < nthreads; t++) rts += ws[t].rts;
        for (int t = 1; t < nthreads; t++)
            for (unsigned b = 0; b < NBUCKETS; b++) hist[b] += ws[t].hist[b];
        const double qs[] = {0.5, 0.9, 0.99, 0.999, 1.0};
        double qv[5] = {0, 0, 0, 0, 0}, sum = 0;
        uint64_t cum = 0;
        int qi = 0;
        for (unsigned b = 0; b < NBUCKETS; b++) {
            if (!hist[b]) continue;
            sum += hist_mid(b) * (double)hist[b];
            cum += hist[b];
            while (qi < 5 && (double)cum >= qs[qi] * (double)rts) qv[qi++] = hist_mid(b) / 1000.0;
        }
        double secs = (double)(t1 - t0) / 1e9;
        printf("{\"loadgen\": \"c\", \"conns\": %d, \"size\": %zu, \"threads\": %d, "
               "\"round_trips\": %llu, \"seconds\": %.6f, \"rt_per_s\": %.1f, "
               "\"mean_us\": %.2f, \"p50_us\": %.2f, \"p90_us\": %.2f, \"p99_us\": %.2f, "
               "\"p999_us\": %.2f, \"max_us\": %.2f, "
               "\"client_user_s\": %.6f, \"client_sys_s\": %.6f}\n",
               nconns, g_size, nthreads, (unsigned long long)rts, secs, (double)rts / secs,
               rts ? sum / (double)rts / 1000.0 : 0.0, qv[0], qv[1], qv[2], qv[3], qv[4],
               tv_s(ru1.ru_utime) - tv_s(ru0.ru_utime), tv_s(ru1.ru_stime) - tv_s(ru0.ru_stime));
        fflush(stdout);
        if (sync) wait_line("quit"); /* any line or EOF: the runner has sampled */
    }
    g_quit = 1;
    pthread_barrier_wait(&g_barrier);
    for (int t = 0; t < nthreads; t++) pthread_join(ws[t].thread, NULL);
    for (int i = 0; i < nconns; i++) close(conns[i].fd);
    return rc;
}
