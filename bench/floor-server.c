/* The floor for the RPC benchmark: the least a server can do to answer the persistence
 * protocol's Get over a unix stream socket, one connection per call as NVML makes them.
 * Single-threaded, blocking; reads one record, answers "enabled" with the call's xid,
 * waits for the client to close. bench/run.mjs measures gpu-persistd against it.
 *
 *   floor-server SOCKET_PATH
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <arpa/inet.h>

static int read_full(int fd, unsigned char *buf, size_t n) {
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, buf + got, n - got);
        if (r <= 0) return -1;
        got += (size_t)r;
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 2) return 2;
    int server = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    strncpy(addr.sun_path, argv[1], sizeof addr.sun_path - 1);
    unlink(argv[1]);
    if (bind(server, (struct sockaddr *)&addr, sizeof addr) || listen(server, 128)) return perror("bind"), 1;
    printf("listening\n");
    fflush(stdout);
    for (;;) {
        int c = accept(server, NULL, NULL);
        if (c < 0) continue;
        unsigned char header[4], body[8192];
        if (read_full(c, header, 4) == 0) {
            uint32_t len = ntohl(*(uint32_t *)header) & 0x7fffffffu;
            if (len >= 4 && len <= sizeof body && read_full(c, body, len) == 0) {
                /* xid, REPLY, MSG_ACCEPTED, AUTH_NONE verifier (flavor, length), SUCCESS, status 0, mode 1 */
                uint32_t reply[9] = {htonl(0x80000000u | 32), *(uint32_t *)body, htonl(1), 0, 0, 0, 0, 0, htonl(1)};
                if (write(c, reply, sizeof reply) < 0) perror("write");
                while (read(c, body, sizeof body) > 0) {
                }
            }
        }
        close(c);
    }
}
