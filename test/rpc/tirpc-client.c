/* An independent client of the persistence protocol, built on libtirpc's clntunix_create
 * and clnt_call, as NVML's own client is. Prints one JSON line per call.
 *
 *   tirpc-client SOCKET [--auth-sys] PROG VERS null
 *   tirpc-client SOCKET [--auth-sys] PROG VERS get DOMAIN BUS SLOT
 *   tirpc-client SOCKET [--auth-sys] PROG VERS set DOMAIN BUS SLOT MODE
 *   tirpc-client SOCKET [--auth-sys] PROG VERS numa DOMAIN BUS SLOT STATUS
 *   tirpc-client SOCKET [--auth-sys] PROG VERS proc N
 *   tirpc-client SOCKET bench N DOMAIN BUS SLOT      N Gets, one connection each (as NVML does):
 *                                                   prints p50/p99 latency in microseconds
 *   tirpc-client SOCKET toggle N VERS DOMAIN BUS SLOT
 *                                                   N Set DISABLED then Set ENABLED (root), one
 *                                                   connection each, 5 s timeout as NVML's: p50/p99 of each
 */
#include <rpc/rpc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>
#include <time.h>

struct device { int domain, bus, slot, function; };
struct set_args { struct device device; int value; };
struct get_res { int status; int mode; };

static bool_t xdr_device(XDR *x, struct device *d) {
    return xdr_int(x, &d->domain) && xdr_int(x, &d->bus) && xdr_int(x, &d->slot) && xdr_int(x, &d->function);
}
static bool_t xdr_set_args(XDR *x, struct set_args *a) { return xdr_device(x, &a->device) && xdr_int(x, &a->value); }
/* The discriminated union: the mode follows only when the status is SUCCESS. */
static bool_t xdr_get_res(XDR *x, struct get_res *r) {
    if (!xdr_int(x, &r->status)) return FALSE;
    return r->status == 0 ? xdr_int(x, &r->mode) : TRUE;
}

static CLIENT *connect_to(const char *path, unsigned long prog, unsigned long vers, int auth_sys) {
    struct sockaddr_un addr;
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    strncpy(addr.sun_path, path, sizeof addr.sun_path - 1);
    int sock = RPC_ANYSOCK;
    CLIENT *c = clntunix_create(&addr, prog, vers, &sock, 0, 0);
    if (!c) {
        printf("{\"error\":\"connect\",\"detail\":\"%s\"}\n", clnt_spcreateerror(path));
        exit(2);
    }
    /* clntunix_create leaves the socket open at clnt_destroy unless told otherwise; NVML's
     * client closes its connection after each query, and so must this one. */
    clnt_control(c, CLSET_FD_CLOSE, NULL);
    if (auth_sys) {
        auth_destroy(c->cl_auth);
        c->cl_auth = authunix_create_default();
    }
    return c;
}

static void report(CLIENT *c, enum clnt_stat st, const char *result) {
    if (st == RPC_SUCCESS) {
        printf("{\"rpc\":\"RPC_SUCCESS\",%s}\n", result);
        return;
    }
    struct rpc_err err;
    clnt_geterr(c, &err);
    if (st == RPC_PROGVERSMISMATCH)
        printf("{\"rpc\":\"RPC_PROGVERSMISMATCH\",\"low\":%lu,\"high\":%lu}\n", (unsigned long)err.re_vers.low,
               (unsigned long)err.re_vers.high);
    else
        printf("{\"rpc\":\"%s\",\"detail\":\"%s\"}\n",
               st == RPC_PROGUNAVAIL ? "RPC_PROGUNAVAIL"
               : st == RPC_PROCUNAVAIL ? "RPC_PROCUNAVAIL"
               : st == RPC_CANTDECODEARGS ? "RPC_CANTDECODEARGS"
               : st == RPC_AUTHERROR ? "RPC_AUTHERROR"
               : "RPC_OTHER",
               clnt_sperrno(st));
}

static double now_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static int compare(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
    struct timeval timeout = {10, 0};
    if (argc < 3) {
        fprintf(stderr, "usage: see the comment at the top of tirpc-client.c\n");
        return 64;
    }
    const char *path = argv[1];
    if (strcmp(argv[2], "bench") == 0 && argc == 7) {
        int n = atoi(argv[3]);
        struct device d = {atoi(argv[4]), atoi(argv[5]), atoi(argv[6]), 0};
        double *lat = malloc(sizeof(double) * (size_t)n);
        double start = now_us();
        for (int i = 0; i < n; i++) {
            double t0 = now_us();
            CLIENT *c = connect_to(path, 35006, 1, 0);
            struct get_res r = {0, 0};
            if (clnt_call(c, 2, (xdrproc_t)xdr_device, (char *)&d, (xdrproc_t)xdr_get_res, (char *)&r, timeout) !=
                    RPC_SUCCESS ||
                r.status != 0) {
                printf("{\"error\":\"call %d failed\"}\n", i);
                return 1;
            }
            clnt_destroy(c);
            lat[i] = now_us() - t0;
        }
        double total = now_us() - start;
        qsort(lat, (size_t)n, sizeof(double), compare);
        printf("{\"calls\":%d,\"p50_us\":%.1f,\"p99_us\":%.1f,\"per_s\":%.1f}\n", n, lat[n / 2], lat[(n * 99) / 100],
               n / (total / 1e6));
        return 0;
    }
    if (strcmp(argv[2], "toggle") == 0 && argc == 8) {
        int n = atoi(argv[3]);
        unsigned long vers = strtoul(argv[4], NULL, 0);
        struct timeval five = {5, 0};
        double *lat[2] = {malloc(sizeof(double) * (size_t)n), malloc(sizeof(double) * (size_t)n)};
        for (int i = 0; i < n; i++) {
            for (int mode = 0; mode < 2; mode++) {
                struct set_args s = {{atoi(argv[5]), atoi(argv[6]), atoi(argv[7]), 0}, mode};
                int status = -1;
                double t0 = now_us();
                CLIENT *c = connect_to(path, 35006, vers, 1);
                enum clnt_stat st = clnt_call(c, 1, (xdrproc_t)xdr_set_args, (char *)&s, (xdrproc_t)xdr_int,
                                              (char *)&status, five);
                clnt_destroy(c);
                if (st != RPC_SUCCESS || status != 0) {
                    printf("{\"error\":\"set %d of round %d: %s, status %d\"}\n", mode, i, clnt_sperrno(st), status);
                    return 1;
                }
                lat[mode][i] = now_us() - t0;
            }
        }
        for (int mode = 0; mode < 2; mode++) qsort(lat[mode], (size_t)n, sizeof(double), compare);
        printf("{\"rounds\":%d,\"disable_p50_us\":%.1f,\"disable_p99_us\":%.1f,\"enable_p50_us\":%.1f,"
               "\"enable_p99_us\":%.1f}\n",
               n, lat[0][n / 2], lat[0][(n * 99) / 100], lat[1][n / 2], lat[1][(n * 99) / 100]);
        return 0;
    }
    int i = 2, auth_sys = 0;
    if (strcmp(argv[i], "--auth-sys") == 0) {
        auth_sys = 1;
        i++;
    }
    if (argc < i + 3) return 64;
    unsigned long prog = strtoul(argv[i], NULL, 0), vers = strtoul(argv[i + 1], NULL, 0);
    const char *what = argv[i + 2];
    char **a = argv + i + 3;
    int n = argc - i - 3;
    CLIENT *c = connect_to(path, prog, vers, auth_sys);
    char result[128] = "\"ok\":true";
    enum clnt_stat st;
    if (strcmp(what, "null") == 0) {
        st = clnt_call(c, 0, (xdrproc_t)xdr_void, NULL, (xdrproc_t)xdr_void, NULL, timeout);
    } else if (strcmp(what, "get") == 0 && n == 3) {
        struct device d = {atoi(a[0]), atoi(a[1]), atoi(a[2]), 0};
        struct get_res r = {-1, -1};
        st = clnt_call(c, 2, (xdrproc_t)xdr_device, (char *)&d, (xdrproc_t)xdr_get_res, (char *)&r, timeout);
        snprintf(result, sizeof result, "\"status\":%d,\"mode\":%d", r.status, r.status == 0 ? r.mode : -1);
    } else if ((strcmp(what, "set") == 0 || strcmp(what, "numa") == 0) && n == 4) {
        struct set_args s = {{atoi(a[0]), atoi(a[1]), atoi(a[2]), 0}, atoi(a[3])};
        int status = -1;
        st = clnt_call(c, strcmp(what, "set") == 0 ? 1 : 2, (xdrproc_t)xdr_set_args, (char *)&s, (xdrproc_t)xdr_int,
                       (char *)&status, timeout);
        snprintf(result, sizeof result, "\"status\":%d", status);
    } else if (strcmp(what, "proc") == 0 && n == 1) {
        st = clnt_call(c, (rpcproc_t)atoi(a[0]), (xdrproc_t)xdr_void, NULL, (xdrproc_t)xdr_void, NULL, timeout);
    } else {
        fprintf(stderr, "bad arguments\n");
        return 64;
    }
    report(c, st, result);
    clnt_destroy(c);
    return 0;
}
