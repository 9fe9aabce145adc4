/*
 * hbref: the C floor of hbloop's bench (`python -m bench --against c`).
 *
 * A minimal server for protocol.md, version 1, written the way a careful C server
 * would be, so that the bench can print how far hbloop (Python) sits from a server
 * whose cost is almost all kernel:
 *
 *   - one single-threaded, level-triggered epoll loop; non-blocking accept4();
 *   - each read goes into one shared buffer and its complete frames are acted on
 *     there; only the bytes of a partial frame are kept per connection (allocated
 *     when needed, freed when consumed), and unsent output likewise;
 *   - every header is checked as soon as its 6 bytes are in (F1), then HELLO is
 *     answered with WELCOME and the grant of rule T1 (integers only), PING with
 *     PONG, DATA is echoed (as `hbloop serve` does), CLOSE, ERROR and EOF end the
 *     connection (C2, C5), a violation gets ERROR and a close as in C1;
 *   - liveness (T6, H5) is one deadline per connection in a dense array, set once
 *     per read that completed a frame (a store and a compare). The loop sleeps until
 *     the earliest deadline it knows of, then sweeps the array: a peer past its
 *     deadline has what waits in its socket read first, then gets CLOSE TIMEOUT (or
 *     HANDSHAKE_TIMEOUT) and is lingered on as C1 says; the sweep also finds the
 *     next earliest deadline. Heartbeats only push deadlines later, so with every
 *     peer heartbeating a sweep comes about once per timeout minus interval.
 *
 * Left out on purpose, because the bench's clients never need them and a floor
 * should not pay for them: name checks beyond length and control bytes (it logs
 * nothing, so names go nowhere), authentication, ping strikes (T8) and peer rate
 * limits (T9) (both MAY), connection and handshake caps, graceful shutdown
 * (SIGTERM ends the process at once), TLS. The server always grants scheme 0
 * (clients ping), `hbloop serve`'s default.
 *
 * Usage: hbref --host HOST --interval-ms D --timeout-ms E
 *              --min-interval-ms L --max-interval-ms U [--port P]
 * It prints "listening on HOST:PORT" once ready, as bench/reference_server.py does.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* protocol.md section 1: length u32, type u8, flags u8. */
#define HEADER 6
/* F2: the largest HELLO a server can still judge (6 + 255 + 2 + 4096), the limit
 * before the handshake; after it, `hbloop serve --max-frame`'s default. */
#define MAX_HELLO_PAYLOAD 4359u
#define MAX_PAYLOAD 65536u
/* Section 1 and "The credential": a name is 1 to 64 bytes, a token 1 to 4096. */
#define MAX_NAME 64u
#define MAX_TOKEN 4096u
/* `hbloop serve --max-pending`'s default: a peer that leaves more output than this
 * unread is a slow consumer and is closed, so memory per peer stays bounded. */
#define MAX_PENDING (256u * 1024u)
/* Linux caps the accept queue at net.core.somaxconn (4096); hbloop asks for the same. */
#define BACKLOG 4096
/* H5 and C1, the reference server's defaults: the handshake deadline and how long a
 * side that sent CLOSE or ERROR waits for the peer's FIN. */
#define HANDSHAKE_US (10 * 1000000LL)
#define LINGER_US (2 * 1000000LL)
/* Sweeps run when the earliest deadline is due, but at most once a millisecond (the
 * resolution of epoll_wait's timeout): peers falling due close together are closed by
 * one scan, and a scan of 20,000 deadlines (some 20 us) a thousand times a second
 * would still be 2% of a core. A silent peer is closed a millisecond or two past its
 * timeout, as `hbloop serve` closes it within a few (the zombie figures show both). */
#define MIN_SWEEP_GAP_US 1000LL
/* Ready events taken per epoll_wait: as many as one wake-up usually has, and more
 * simply wait for the next call (level-triggered, nothing is lost). */
#define MAX_EVENTS 1024
/* Connections accepted per wake-up of the listener, so a connect storm cannot keep
 * the established peers waiting for long. */
#define ACCEPT_BURST 128
/* One read takes up to a whole maximum frame; output of one read (PONGs, echoes) is
 * gathered before a single send(), with room for two maximum frames. */
#define READ_SIZE (HEADER + MAX_PAYLOAD)
#define REPLY_SIZE (2 * (HEADER + MAX_PAYLOAD))
/* The descriptor table's size when the open-files limit is unlimited (as hbloop). */
#define FD_CAP_UNLIMITED (1 << 20)
/* protocol.md T2: a grant's timeout must fit its u32 field. */
#define U32_MAX 4294967295ULL

enum { HELLO = 1, WELCOME, PING, PONG, DATA, CLOSE, ERROR };
enum {
    C_TIMEOUT = 0x0002,
    C_HANDSHAKE_TIMEOUT = 0x0003,
    C_UNSUPPORTED_VERSION = 0x0101,
    C_BAD_NAME = 0x0102,
    C_UNAUTHORIZED = 0x0104,
    C_FRAME_TOO_LARGE = 0x0201,
    C_UNKNOWN_TYPE = 0x0202,
    C_RESERVED_BITS = 0x0203,
    C_MALFORMED = 0x0204,
    C_HELLO_REQUIRED = 0x0205,
    C_DUPLICATE_HELLO = 0x0206,
    C_UNEXPECTED_FRAME = 0x0207,
};
enum { FREE = 0, AWAIT_HELLO, OPEN, CLOSING };

struct conn {
    uint8_t *in;        /* bytes of a partial frame (NULL when none) */
    uint8_t *out;       /* output the socket did not take yet (NULL when none) */
    uint32_t in_len, in_cap;
    uint32_t out_off, out_len, out_cap;
    uint32_t timeout_ms; /* the granted timeout T */
    uint8_t state;
    uint8_t writable;   /* EPOLLOUT is registered */
    uint8_t shut;       /* our FIN is sent (CLOSING) */
};

static struct conn *conns;  /* indexed by descriptor */
static int64_t *deadline;   /* indexed by descriptor; 0: none */
static int fd_cap, max_fd = -1, epfd, listen_fd, spare_fd = -1;
static uint32_t cfg_interval, cfg_timeout, cfg_min, cfg_max; /* D, E, Lmin, Lmax (ms) */
static int64_t now;         /* microseconds, CLOCK_MONOTONIC, once per wake-up */
static int64_t next_sweep = INT64_MAX; /* no later than the earliest deadline */
static uint8_t rbuf[READ_SIZE];
static uint8_t reply[REPLY_SIZE];
static size_t reply_len;
static struct epoll_event events[MAX_EVENTS];

static int64_t monotonic_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24), p[1] = (uint8_t)(v >> 16), p[2] = (uint8_t)(v >> 8), p[3] = (uint8_t)v;
}

/* Grow *buf to hold need bytes; 0 on success. */
static int reserve(uint8_t **buf, uint32_t *cap, size_t need)
{
    if (need <= *cap)
        return 0;
    size_t size = *cap ? *cap : 64;
    while (size < need)
        size *= 2;
    uint8_t *grown = realloc(*buf, size);
    if (!grown)
        return -1;
    *buf = grown, *cap = (uint32_t)size;
    return 0;
}

static void set_deadline(int fd, int64_t when)
{
    deadline[fd] = when;
    if (when < next_sweep)
        next_sweep = when;
}

static void release(int fd)
{
    struct conn *c = &conns[fd];
    close(fd); /* also leaves the epoll set */
    free(c->in);
    free(c->out);
    memset(c, 0, sizeof *c);
    deadline[fd] = 0;
}

static void want_write(int fd, int on)
{
    struct epoll_event ev = {.events = EPOLLIN | (on ? EPOLLOUT : 0), .data.fd = fd};
    epoll_ctl(epfd, EPOLL_CTL_MOD, fd, &ev);
    conns[fd].writable = (uint8_t)on;
}

/* Send the gathered reply (behind any output still waiting); -1 if the peer is gone
 * or is a slow consumer, and the caller releases it. */
static int flush(int fd)
{
    struct conn *c = &conns[fd];
    size_t len = reply_len, sent = 0;
    reply_len = 0;
    if (len && !c->out_len) {
        ssize_t n = send(fd, reply, len, MSG_NOSIGNAL);
        if (n < 0 && errno != EAGAIN && errno != EINTR)
            return -1;
        sent = n > 0 ? (size_t)n : 0;
    }
    if (sent < len) {
        size_t rest = len - sent;
        if (c->out_len + rest > MAX_PENDING)
            return -1;
        if (reserve(&c->out, &c->out_cap, c->out_off + c->out_len + rest))
            return -1;
        memcpy(c->out + c->out_off + c->out_len, reply + sent, rest);
        c->out_len += (uint32_t)rest;
        if (!c->writable)
            want_write(fd, 1);
    }
    /* C1: once the last frame is flushed, half-close and wait for the peer's FIN. */
    if (c->state == CLOSING && !c->out_len && !c->shut) {
        shutdown(fd, SHUT_WR);
        c->shut = 1;
    }
    return 0;
}

/* Append one frame to the reply; the reply is flushed first if it is full. */
static int queue(int fd, uint8_t type, const uint8_t *payload, uint32_t len)
{
    if (reply_len + HEADER + len > sizeof reply && flush(fd))
        return -1;
    put32(reply + reply_len, len);
    reply[reply_len + 4] = type;
    reply[reply_len + 5] = 0;
    if (len)
        memcpy(reply + reply_len + HEADER, payload, len);
    reply_len += HEADER + len;
    return 0;
}

/* End the connection with CLOSE or ERROR (code, then a short message): C1, C3. */
static void end_with(int fd, uint8_t type, uint16_t code, const char *message)
{
    uint8_t payload[2 + 64];
    size_t mlen = type == ERROR ? strlen(message) : 0;
    payload[0] = (uint8_t)(code >> 8), payload[1] = (uint8_t)code;
    memcpy(payload + 2, message, mlen);
    queue(fd, type, payload, (uint32_t)(2 + mlen));
    conns[fd].state = CLOSING;
    set_deadline(fd, now + LINGER_US);
}

/* protocol.md T1, in integers: (I, T) for a request r. */
static void grant(uint32_t r, uint32_t *interval, uint32_t *timeout)
{
    uint64_t i = r == 0 ? cfg_interval : r < cfg_min ? cfg_min : r > cfg_max ? cfg_max : r;
    *interval = (uint32_t)i;
    *timeout = (uint32_t)((i * cfg_timeout + cfg_interval - 1) / cfg_interval);
}

/* Why a HELLO payload is refused, H2's checks in their order (setting *code), or NULL
 * if it is admitted. */
static const char *refusal(const uint8_t *p, uint32_t len, uint16_t *code)
{
    *code = C_UNSUPPORTED_VERSION;
    if (len >= 1 && p[0] != 1)
        return "version 1 only";
    *code = C_MALFORMED;
    if (len < 6 || 6u + p[5] > len)
        return "bad HELLO";
    uint32_t name_len = p[5], rest = len - 6 - name_len;
    const uint8_t *name = p + 6, *token = name + name_len + 2;
    if (rest && (rest < 2 || rest != 2u + get16(name + name_len)))
        return "bad HELLO token length";
    *code = C_BAD_NAME;
    if (name_len == 0 || name_len > MAX_NAME)
        return "name must be 1 to 64 bytes";
    for (uint32_t k = 0; k < name_len; k++) {
        /* C0 and DEL, and C1 (U+0080 to U+009F: UTF-8 C2 80 to C2 9F). */
        int c1 = name[k] == 0xc2 && k + 1 < name_len && name[k + 1] >= 0x80 && name[k + 1] < 0xa0;
        if (name[k] < 0x20 || name[k] == 0x7f || c1)
            return "control character in name";
    }
    *code = C_UNAUTHORIZED; /* a well-formed token is ignored: no authentication here */
    uint32_t token_len = rest ? rest - 2 : 0;
    if (rest && (token_len == 0 || token_len > MAX_TOKEN))
        return "token must be 1 to 4096 bytes";
    for (uint32_t k = 0; k < token_len; k++)
        if (token[k] < 0x21 || token[k] > 0x7e)
            return "token must be printable ASCII";
    return NULL;
}

/* HELLO: refused (H2), or answered with WELCOME and the grant (H3). */
static void hello(int fd, const uint8_t *p, uint32_t len)
{
    uint16_t code;
    const char *why = refusal(p, len, &code);
    if (why) {
        end_with(fd, ERROR, code, why);
        return;
    }
    uint32_t interval, timeout;
    grant(get32(p + 1), &interval, &timeout);
    uint8_t welcome[10] = {1, 0}; /* version 1, scheme 0: the client pings */
    put32(welcome + 2, interval);
    put32(welcome + 6, timeout);
    queue(fd, WELCOME, welcome, sizeof welcome);
    conns[fd].state = OPEN;
    conns[fd].timeout_ms = timeout;
}

/* Act on the frames at the start of data[0, len); returns the bytes consumed, or -1
 * if the connection was released. Stops at a partial frame (F4) or at CLOSING. */
static long frames(int fd, const uint8_t *data, size_t len)
{
    struct conn *c = &conns[fd];
    size_t off = 0;
    int complete = 0;
    while (c->state != CLOSING && len - off >= HEADER) {
        const uint8_t *h = data + off;
        uint32_t plen = get32(h);
        uint8_t type = h[4];
        /* F1, in its order, from the header alone. */
        if (h[5]) {
            end_with(fd, ERROR, C_RESERVED_BITS, "flags must be zero");
            break;
        }
        if (type < HELLO || type > ERROR) {
            end_with(fd, ERROR, C_UNKNOWN_TYPE, "unknown frame type");
            break;
        }
        if (plen > (c->state == AWAIT_HELLO ? MAX_HELLO_PAYLOAD : MAX_PAYLOAD)) {
            end_with(fd, ERROR, C_FRAME_TOO_LARGE, "frame too large");
            break;
        }
        if ((type == PING || type == PONG) && plen) {
            end_with(fd, ERROR, C_MALFORMED, "PING and PONG are empty");
            break;
        }
        if (len - off - HEADER < plen)
            break;
        const uint8_t *p = h + HEADER;
        off += HEADER + plen;
        complete = 1;
        if (c->state == AWAIT_HELLO) {
            if (type == HELLO)
                hello(fd, p, plen);
            else
                end_with(fd, ERROR, C_HELLO_REQUIRED, "HELLO first");
            continue;
        }
        switch (type) {
        case PING:
            queue(fd, PONG, NULL, 0);
            break;
        case PONG: /* a one-way heartbeat: arriving was all it had to do */
            break;
        case DATA:
            queue(fd, DATA, p, plen);
            break;
        case HELLO:
            end_with(fd, ERROR, C_DUPLICATE_HELLO, "second HELLO");
            break;
        case WELCOME:
            end_with(fd, ERROR, C_UNEXPECTED_FRAME, "WELCOME from a client");
            break;
        case CLOSE:
        case ERROR:
            if (plen < 2 || (type == CLOSE && plen != 2)) { /* F3 */
                end_with(fd, ERROR, C_MALFORMED, "CLOSE and ERROR carry a code");
                break;
            }
            release(fd); /* C2, C3: close without replying */
            reply_len = 0;
            return -1;
        }
    }
    /* T5, T6: a complete frame proves the peer alive until now + T. */
    if (complete && c->state == OPEN)
        set_deadline(fd, now + (int64_t)c->timeout_ms * 1000);
    return (long)off;
}

static void on_readable(int fd)
{
    struct conn *c = &conns[fd];
    ssize_t n = recv(fd, rbuf, sizeof rbuf, 0);
    if (n < 0) {
        if (errno != EAGAIN && errno != EINTR)
            release(fd); /* reset */
        return;
    }
    if (n == 0) { /* EOF: C5, a partial frame pending is a truncation */
        if (c->state != CLOSING && c->in_len) {
            end_with(fd, ERROR, C_MALFORMED, "truncated frame");
            if (flush(fd) == 0)
                return; /* lingers until the FIN is out and the deadline passes */
        }
        release(fd);
        return;
    }
    if (c->state == CLOSING)
        return; /* C1: read and discard */
    const uint8_t *data = rbuf;
    size_t len = (size_t)n;
    if (c->in_len) { /* behind a partial frame: join them */
        if (reserve(&c->in, &c->in_cap, c->in_len + len)) {
            release(fd);
            return;
        }
        memcpy(c->in + c->in_len, rbuf, len);
        c->in_len += (uint32_t)len;
        data = c->in, len = c->in_len;
    }
    long used = frames(fd, data, len);
    if (used < 0)
        return;
    size_t left = c->state == CLOSING ? 0 : len - (size_t)used;
    if (left && data == rbuf) {
        if (reserve(&c->in, &c->in_cap, left)) {
            release(fd);
            return;
        }
        memcpy(c->in, data + used, left);
    } else if (left) {
        memmove(c->in, data + used, left);
    }
    c->in_len = (uint32_t)left;
    if (!left && c->in) { /* idle connections hold no buffer */
        free(c->in);
        c->in = NULL, c->in_cap = 0;
    }
    if (flush(fd))
        release(fd);
}

static void on_writable(int fd)
{
    struct conn *c = &conns[fd];
    ssize_t n = send(fd, c->out + c->out_off, c->out_len, MSG_NOSIGNAL);
    if (n < 0) {
        if (errno != EAGAIN && errno != EINTR)
            release(fd);
        return;
    }
    c->out_off += (uint32_t)n, c->out_len -= (uint32_t)n;
    if (c->out_len)
        return;
    free(c->out);
    c->out = NULL, c->out_off = c->out_cap = 0;
    want_write(fd, 0);
    if (flush(fd)) /* nothing to send: half-closes a CLOSING connection */
        release(fd);
}

static void on_acceptable(void)
{
    for (int k = 0; k < ACCEPT_BURST; k++) {
        int fd = accept4(listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if ((errno == EMFILE || errno == ENFILE) && spare_fd >= 0) {
                /* Out of descriptors: give up the spare one to accept and close the
                 * newcomer, rather than spin on a listener that stays readable. */
                close(spare_fd);
                fd = accept(listen_fd, NULL, NULL);
                if (fd >= 0)
                    close(fd);
                spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
                continue;
            }
            return; /* EAGAIN: the queue is empty */
        }
        if (fd >= fd_cap) {
            close(fd);
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one); /* section 8 */
        struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
        if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev)) {
            close(fd);
            continue;
        }
        conns[fd].state = AWAIT_HELLO;
        set_deadline(fd, now + HANDSHAKE_US); /* H5 */
        if (fd > max_fd)
            max_fd = fd;
    }
}

/* Close every peer past its deadline: a lingering one at once; any other after
 * reading what waits in its socket (T6: its frames may be there, unread, because
 * this process was late), with CLOSE TIMEOUT or HANDSHAKE_TIMEOUT. Then the next
 * sweep is due at the earliest deadline left. */
static void sweep(void)
{
    next_sweep = INT64_MAX;
    for (int fd = 0; fd <= max_fd; fd++) {
        if (!deadline[fd])
            continue;
        if (deadline[fd] <= now) {
            if (conns[fd].state == CLOSING) {
                release(fd);
                continue;
            }
            on_readable(fd);
            if (conns[fd].state == OPEN || conns[fd].state == AWAIT_HELLO) {
                if (deadline[fd] <= now) {
                    int handshake = conns[fd].state == AWAIT_HELLO;
                    end_with(fd, CLOSE, handshake ? C_HANDSHAKE_TIMEOUT : C_TIMEOUT, "");
                    if (flush(fd))
                        release(fd);
                }
            }
        }
        if (deadline[fd] && deadline[fd] < next_sweep)
            next_sweep = deadline[fd];
    }
    while (max_fd >= 0 && !deadline[max_fd])
        max_fd--;
}

static int usage(const char *why)
{
    fprintf(stderr, "hbref: %s\nusage: hbref --host HOST --interval-ms D --timeout-ms E "
                    "--min-interval-ms L --max-interval-ms U [--port P]\n", why);
    return 2;
}

static int listen_on(const char *host, const char *port)
{
    struct addrinfo hints = {.ai_flags = AI_PASSIVE, .ai_socktype = SOCK_STREAM}, *ai;
    int err = getaddrinfo(host, port, &hints, &ai);
    if (err) {
        fprintf(stderr, "hbref: %s: %s\n", host, gai_strerror(err));
        return -1;
    }
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
    int one = 1;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) ||
        bind(fd, ai->ai_addr, ai->ai_addrlen) || listen(fd, BACKLOG)) {
        perror("hbref: listen");
        freeaddrinfo(ai);
        return -1;
    }
    freeaddrinfo(ai);
    return fd;
}

int main(int argc, char **argv)
{
    const char *host = NULL, *port = "0";
    long long ms[4] = {-1, -1, -1, -1};
    static const char *const names[4] = {"--interval-ms", "--timeout-ms", "--min-interval-ms",
                                         "--max-interval-ms"};
    for (int k = 1; k < argc; k += 2) {
        if (k + 1 >= argc)
            return usage("missing value");
        int known = 0;
        if (!strcmp(argv[k], "--host"))
            host = argv[k + 1], known = 1;
        else if (!strcmp(argv[k], "--port"))
            port = argv[k + 1], known = 1;
        for (int j = 0; j < 4; j++)
            if (!strcmp(argv[k], names[j])) {
                char *end;
                ms[j] = strtoll(argv[k + 1], &end, 10);
                if (*end || ms[j] < 0 || (unsigned long long)ms[j] > U32_MAX)
                    return usage("bad number");
                known = 1;
            }
        if (!known)
            return usage("unknown option");
    }
    if (!host || ms[0] < 0 || ms[1] < 0 || ms[2] < 0 || ms[3] < 0)
        return usage("missing option");
    cfg_interval = (uint32_t)ms[0], cfg_timeout = (uint32_t)ms[1];
    cfg_min = (uint32_t)ms[2], cfg_max = (uint32_t)ms[3];
    /* T2: a server refuses to start with a configuration it cannot grant from. */
    if (cfg_min < 1 || cfg_min > cfg_interval || cfg_interval > cfg_max ||
        (uint64_t)cfg_timeout < 2ULL * cfg_interval ||
        ((uint64_t)cfg_max * cfg_timeout + cfg_interval - 1) / cfg_interval > U32_MAX)
        return usage("invalid timing (protocol.md T2)");

    /* Every connection is a descriptor: raise the soft limit to the hard one. */
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    getrlimit(RLIMIT_NOFILE, &rl);
    fd_cap = rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur > FD_CAP_UNLIMITED ? FD_CAP_UNLIMITED
                                                                              : (int)rl.rlim_cur;
    /* Zeroed and touched only as descriptors are used, so untouched pages cost no RSS. */
    conns = calloc((size_t)fd_cap, sizeof *conns);
    deadline = calloc((size_t)fd_cap, sizeof *deadline);
    if (!conns || !deadline)
        return usage("out of memory");
    /* Touch the fixed buffers now, before the bench's first memory sample, so that the
     * memory it divides among the connections is theirs alone. */
    memset(rbuf, 0, sizeof rbuf);
    memset(reply, 0, sizeof reply);
    memset(events, 0, sizeof events);
    signal(SIGPIPE, SIG_IGN);
    spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);

    listen_fd = listen_on(host, port);
    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (listen_fd < 0 || epfd < 0)
        return 1;
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = listen_fd};
    epoll_ctl(epfd, EPOLL_CTL_ADD, listen_fd, &ev);
    struct sockaddr_storage bound;
    socklen_t bound_len = sizeof bound;
    getsockname(listen_fd, (struct sockaddr *)&bound, &bound_len);
    unsigned bound_port = ntohs(bound.ss_family == AF_INET6
                                    ? ((struct sockaddr_in6 *)&bound)->sin6_port
                                    : ((struct sockaddr_in *)&bound)->sin_port);
    printf("listening on %s:%u\n", host, bound_port);
    fflush(stdout);

    now = monotonic_us();
    for (;;) {
        /* Until the next sweep, rounded up to epoll_wait's milliseconds; -1: none due. */
        int64_t wait_us = next_sweep - now;
        int wait_ms = next_sweep == INT64_MAX ? -1
                      : wait_us <= 0          ? 0
                      : wait_us / 1000 >= INT_MAX ? INT_MAX
                                              : (int)((wait_us + 999) / 1000);
        int n = epoll_wait(epfd, events, MAX_EVENTS, wait_ms);
        if (n < 0)
            n = 0; /* EINTR: a SIGSTOP/SIGCONT, say */
        now = monotonic_us();
        for (int k = 0; k < n; k++) {
            int fd = events[k].data.fd;
            if (fd == listen_fd) {
                on_acceptable();
                continue;
            }
            if (conns[fd].state == FREE)
                continue;
            if (events[k].events & (EPOLLIN | EPOLLHUP | EPOLLERR))
                on_readable(fd);
            if (conns[fd].state != FREE && conns[fd].writable && (events[k].events & EPOLLOUT))
                on_writable(fd);
        }
        if (now >= next_sweep) {
            sweep();
            if (next_sweep < now + MIN_SWEEP_GAP_US)
                next_sweep = now + MIN_SWEEP_GAP_US;
        }
    }
}
