/*
 * crashcheck: crash a daemon at its N-th system call that changes a directory tree.
 *
 *   crashpoint PID ROOT N LOG
 *
 * Attaches (ptrace) to every thread of PID and follows the processes and threads it
 * makes. On entry to each system call it asks: does the call change a file or name
 * under ROOT (a namespace change, a write to a file under ROOT, a chmod, a chown, a
 * utimes, an xattr change, an open that creates or truncates)? Each such call is
 * numbered, in the order the tracer sees them across all threads, and written to LOG
 * as one line: "N <tab> process <tab> syscall <tab> path [<tab> path2]", paths relative
 * to ROOT. fsync, fdatasync and sync change nothing a process kill could lose, so they
 * are not crash points.
 *
 * With N > 0, on entry to call number N (before the kernel runs it) every traced
 * process is killed with SIGKILL, then the tracer exits: the daemon crashes exactly
 * there, with everything it did before on disk, as after a process crash. With N = 0
 * it only counts, until it gets SIGTERM or the daemon exits; then it exits and the
 * kernel detaches the daemon, which runs on.
 *
 * strace's fault injection counts per thread, so it cannot name "the N-th call of the
 * daemon" in a program with many threads (a Go daemon); this counts globally, and only
 * the calls on ROOT. Paths are resolved as the kernel would see them from the tracer:
 * relative ones against the thread's working directory or the directory fd, absolute
 * ones against the process's root (a chrooted child such as docker-untar).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <dirent.h>
#include <unistd.h>

#define MAX_PIDS 4194304
static unsigned char traced[MAX_PIDS / 8];
static pid_t tgids[4096];
static int ntgids;
static char root[PATH_MAX];
static size_t root_len;
static long target;
static long counted;
static FILE *log_file;
static volatile sig_atomic_t stop_requested;

/* where a process's root is on the host, once it chroots or pivots its root (a helper
 * such as docker-untar in a mount namespace of its own); its paths, and what the kernel
 * shows of its fds and cwd, are relative to that */
#define MAX_BASES 256
static struct { pid_t tgid; char path[PATH_MAX]; } bases[MAX_BASES];
static int nbases;

static pid_t tgid_of(pid_t tid) {
    char path[64], line[256];
    pid_t tgid = tid;
    snprintf(path, sizeof path, "/proc/%d/status", tid);
    FILE *f = fopen(path, "r");
    if (!f) return tid;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "Tgid:", 5) == 0) { tgid = (pid_t)atoi(line + 5); break; }
    fclose(f);
    return tgid;
}

static const char *base_of(pid_t tgid) {
    for (int i = 0; i < nbases; i++) if (bases[i].tgid == tgid) return bases[i].path;
    return "";
}

static void set_base(pid_t tgid, const char *path) {
    int i;
    for (i = 0; i < nbases; i++) if (bases[i].tgid == tgid) break;
    if (i == nbases) { if (nbases == MAX_BASES) return; nbases++; }
    bases[i].tgid = tgid;
    snprintf(bases[i].path, sizeof bases[i].path, "%s", strcmp(path, "/") == 0 ? "" : path);
}

static void on_term(int sig) { (void)sig; stop_requested = 1; }

static void mark(pid_t tid) { if (tid > 0 && tid < MAX_PIDS) traced[tid / 8] |= 1 << (tid % 8); }

static void note_tgid(pid_t tid) {
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", tid);
    FILE *f = fopen(path, "r");
    if (!f) return;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "Tgid:", 5) == 0) {
            pid_t tgid = (pid_t)atoi(line + 5);
            for (int i = 0; i < ntgids; i++) if (tgids[i] == tgid) { fclose(f); return; }
            if (ntgids < 4096) tgids[ntgids++] = tgid;
            break;
        }
    }
    fclose(f);
}

static int seize(pid_t tid) {
    long opts = PTRACE_O_TRACESYSGOOD | PTRACE_O_TRACECLONE | PTRACE_O_TRACEFORK |
                PTRACE_O_TRACEVFORK | PTRACE_O_TRACEEXEC;
    if (ptrace(PTRACE_SEIZE, tid, 0, opts) != 0) return -1;
    if (ptrace(PTRACE_INTERRUPT, tid, 0, 0) != 0) return -1;
    mark(tid);
    return 0;
}

static int attach_all(pid_t pid) {
    int added;
    do {  /* threads made while attaching: list again until nothing new */
        added = 0;
        char path[64];
        snprintf(path, sizeof path, "/proc/%d/task", pid);
        DIR *d = opendir(path);
        if (!d) return -1;
        struct dirent *e;
        while ((e = readdir(d)) != NULL) {
            pid_t tid = (pid_t)atoi(e->d_name);
            if (tid <= 0 || (traced[tid / 8] & (1 << (tid % 8)))) continue;
            if (seize(tid) == 0) added++;
        }
        closedir(d);
    } while (added);
    note_tgid(pid);
    return 0;
}

static int read_string(pid_t tid, unsigned long addr, char *out, size_t size) {
    if (addr == 0) { out[0] = 0; return -1; }
    size_t got = 0;
    while (got < size - 1) {
        size_t chunk = 4096 - ((addr + got) % 4096);  /* never across a page: it may be unmapped */
        if (chunk > size - 1 - got) chunk = size - 1 - got;
        struct iovec local = { out + got, chunk }, remote = { (void *)(addr + got), chunk };
        ssize_t n = process_vm_readv(tid, &local, 1, &remote, 1, 0);
        if (n <= 0) break;
        if (memchr(out + got, 0, (size_t)n)) return 0;
        got += (size_t)n;
    }
    out[got] = 0;
    return got ? 0 : -1;
}

static int link_of(pid_t tid, const char *what, char *out, size_t size) {
    char path[96], seen[PATH_MAX];
    snprintf(path, sizeof path, "/proc/%d/%s", tid, what);
    ssize_t n = readlink(path, seen, sizeof seen - 1);
    if (n < 0) { out[0] = 0; return -1; }
    seen[n] = 0;
    const char *base = base_of(tgid_of(tid));
    if (seen[0] == '/' && base[0]) snprintf(out, size, "%s%s", base, strcmp(seen, "/") == 0 ? "" : seen);
    else snprintf(out, size, "%s", seen);
    return 0;
}

static int fd_path(pid_t tid, long fd, char *out, size_t size) {
    char what[48];
    snprintf(what, sizeof what, "fd/%ld", fd);
    return link_of(tid, what, out, size);
}

/* the host path a path argument names, given the directory fd it is relative to */
static int resolve(pid_t tid, long dirfd, unsigned long addr, char *out, size_t size) {
    char name[PATH_MAX], base[PATH_MAX];
    if (read_string(tid, addr, name, sizeof name) != 0) return -1;
    if (name[0] == '/') {
        snprintf(base, sizeof base, "%s", base_of(tgid_of(tid)));
    } else if ((int)dirfd == AT_FDCWD) {
        if (link_of(tid, "cwd", base, sizeof base) != 0) return -1;
    } else if (fd_path(tid, dirfd, base, sizeof base) != 0) {
        return -1;
    }
    if (name[0] == 0) snprintf(out, size, "%s", base);
    else if (name[0] == '/') snprintf(out, size, "%s%s", base, name);
    else snprintf(out, size, "%s/%s", strcmp(base, "/") == 0 ? "" : base, name);
    return 0;
}

static const char *under_root(const char *path) {
    if (strncmp(path, root, root_len) != 0) return NULL;
    if (path[root_len] == 0) return ".";
    if (path[root_len] != '/') return NULL;
    return path + root_len + 1;
}

static void process_name(pid_t tid, char *out, size_t size) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/comm", tid);
    FILE *f = fopen(path, "r");
    out[0] = 0;
    if (f) {
        if (fgets(out, (int)size, f)) out[strcspn(out, "\n")] = 0;
        fclose(f);
    }
    if (!out[0]) snprintf(out, size, "?");
}

enum kind { NONE, PATH1, PATH2, FD };

struct call {
    long nr;
    const char *name;
    enum kind kind;
    int dirfd1, path1, dirfd2, path2;  /* argument indexes; -1: AT_FDCWD / none */
    int flags;                          /* index of open flags, -1 if none */
};

#define ANY -1
static const struct call calls[] = {
    { SYS_open, "open", PATH1, -1, 0, -1, -1, 1 },
    { SYS_creat, "creat", PATH1, -1, 0, -1, -1, -1 },
    { SYS_openat, "openat", PATH1, 0, 1, -1, -1, 2 },
    { SYS_openat2, "openat2", PATH1, 0, 1, -1, -1, 2 },
    { SYS_mkdir, "mkdir", PATH1, -1, 0, -1, -1, -1 },
    { SYS_mkdirat, "mkdirat", PATH1, 0, 1, -1, -1, -1 },
    { SYS_rmdir, "rmdir", PATH1, -1, 0, -1, -1, -1 },
    { SYS_unlink, "unlink", PATH1, -1, 0, -1, -1, -1 },
    { SYS_unlinkat, "unlinkat", PATH1, 0, 1, -1, -1, -1 },
    { SYS_rename, "rename", PATH2, -1, 0, -1, 1, -1 },
    { SYS_renameat, "renameat", PATH2, 0, 1, 2, 3, -1 },
    { SYS_renameat2, "renameat2", PATH2, 0, 1, 2, 3, -1 },
    { SYS_link, "link", PATH2, -1, 0, -1, 1, -1 },
    { SYS_linkat, "linkat", PATH2, 0, 1, 2, 3, -1 },
    { SYS_symlink, "symlink", PATH1, -1, 1, -1, -1, -1 },
    { SYS_symlinkat, "symlinkat", PATH1, 1, 2, -1, -1, -1 },
    { SYS_mknod, "mknod", PATH1, -1, 0, -1, -1, -1 },
    { SYS_mknodat, "mknodat", PATH1, 0, 1, -1, -1, -1 },
    { SYS_chmod, "chmod", PATH1, -1, 0, -1, -1, -1 },
    { SYS_fchmodat, "fchmodat", PATH1, 0, 1, -1, -1, -1 },
    { SYS_chown, "chown", PATH1, -1, 0, -1, -1, -1 },
    { SYS_lchown, "lchown", PATH1, -1, 0, -1, -1, -1 },
    { SYS_fchownat, "fchownat", PATH1, 0, 1, -1, -1, -1 },
    { SYS_utimensat, "utimensat", PATH1, 0, 1, -1, -1, -1 },
    { SYS_truncate, "truncate", PATH1, -1, 0, -1, -1, -1 },
    { SYS_setxattr, "setxattr", PATH1, -1, 0, -1, -1, -1 },
    { SYS_lsetxattr, "lsetxattr", PATH1, -1, 0, -1, -1, -1 },
    { SYS_removexattr, "removexattr", PATH1, -1, 0, -1, -1, -1 },
    { SYS_lremovexattr, "lremovexattr", PATH1, -1, 0, -1, -1, -1 },
    { SYS_write, "write", FD, 0, -1, -1, -1, -1 },
    { SYS_pwrite64, "pwrite64", FD, 0, -1, -1, -1, -1 },
    { SYS_writev, "writev", FD, 0, -1, -1, -1, -1 },
    { SYS_pwritev, "pwritev", FD, 0, -1, -1, -1, -1 },
    { SYS_pwritev2, "pwritev2", FD, 0, -1, -1, -1, -1 },
    { SYS_ftruncate, "ftruncate", FD, 0, -1, -1, -1, -1 },
    { SYS_fallocate, "fallocate", FD, 0, -1, -1, -1, -1 },
    { SYS_fchmod, "fchmod", FD, 0, -1, -1, -1, -1 },
    { SYS_fchown, "fchown", FD, 0, -1, -1, -1, -1 },
    { SYS_fsetxattr, "fsetxattr", FD, 0, -1, -1, -1, -1 },
    { SYS_fremovexattr, "fremovexattr", FD, 0, -1, -1, -1, -1 },
    { SYS_copy_file_range, "copy_file_range", FD, 2, -1, -1, -1, -1 },
    { SYS_sendfile, "sendfile", FD, 0, -1, -1, -1, -1 },
    { SYS_splice, "splice", FD, 2, -1, -1, -1, -1 },
};

static const struct call *lookup_call(long nr) {
    for (size_t i = 0; i < sizeof calls / sizeof calls[0]; i++)
        if (calls[i].nr == nr) return &calls[i];
    return NULL;
}

static int is_regular_or_dir_fd(pid_t tid, long fd) {
    char path[PATH_MAX];
    if (fd_path(tid, fd, path, sizeof path) != 0) return 0;
    return path[0] == '/';  /* sockets, pipes and anon inodes read as "socket:[..]" */
}

static long open_flags(pid_t tid, const struct call *c, const uint64_t *args) {
    if (c->nr == SYS_openat2) {
        uint64_t flags = 0;
        struct iovec local = { &flags, sizeof flags }, remote = { (void *)args[2], sizeof flags };
        if (process_vm_readv(tid, &local, 1, &remote, 1, 0) != (ssize_t)sizeof flags) return 0;
        return (long)flags;
    }
    return (long)args[c->flags];
}

/* the crash point this call is (its log line without the number), or 0 */
static int crash_point(pid_t tid, const struct __ptrace_syscall_info *info, char *line, size_t size) {
    const struct call *c = lookup_call((long)info->entry.nr);
    if (!c) return 0;
    const uint64_t *a = (const uint64_t *)info->entry.args;
    char p1[PATH_MAX], p2[PATH_MAX];
    const char *r1 = NULL, *r2 = NULL;
    if (c->kind == FD) {
        long fd = (long)a[c->dirfd1];
        if (!is_regular_or_dir_fd(tid, fd) || fd_path(tid, fd, p1, sizeof p1) != 0) return 0;
        r1 = under_root(p1);
        if (!r1) return 0;
    } else {
        if (c->flags >= 0) {
            long flags = open_flags(tid, c, a);
            if (!(flags & (O_CREAT | O_TRUNC))) return 0;
        }
        long d1 = c->dirfd1 >= 0 ? (long)(int)a[c->dirfd1] : AT_FDCWD;
        if (resolve(tid, d1, a[c->path1], p1, sizeof p1) != 0) return 0;
        r1 = under_root(p1);
        if (c->kind == PATH2) {
            long d2 = c->dirfd2 >= 0 ? (long)(int)a[c->dirfd2] : AT_FDCWD;
            if (resolve(tid, d2, a[c->path2], p2, sizeof p2) != 0) return 0;
            r2 = under_root(p2);
            if (!r1 && !r2) return 0;
        } else if (!r1) {
            return 0;
        }
    }
    char proc[32];
    process_name(tid, proc, sizeof proc);
    if (c->kind == PATH2)
        snprintf(line, size, "%s\t%s\t%s\t%s", proc, c->name, r1 ? r1 : p1, r2 ? r2 : p2);
    else
        snprintf(line, size, "%s\t%s\t%s", proc, c->name, r1);
    return 1;
}

/* a chroot or pivot_root moves the process's root: remember where it now is */
static void follow_root(pid_t tid, const struct __ptrace_syscall_info *info) {
    long nr = (long)info->entry.nr;
    if (nr != SYS_chroot && nr != SYS_pivot_root) return;
    char path[PATH_MAX];
    if (resolve(tid, AT_FDCWD, (unsigned long)info->entry.args[0], path, sizeof path) == 0)
        set_base(tgid_of(tid), path);
}

static void kill_all(pid_t tid) {
    note_tgid(tid);
    for (int i = 0; i < ntgids; i++) kill(tgids[i], SIGKILL);
    kill(tid, SIGKILL);
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: crashpoint PID ROOT N LOG\n");
        return 2;
    }
    pid_t pid = (pid_t)atoi(argv[1]);
    snprintf(root, sizeof root, "%s", argv[2]);
    root_len = strlen(root);
    target = atol(argv[3]);
    log_file = fopen(argv[4], "w");
    if (!log_file) { perror("crashpoint: log"); return 2; }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_term;  /* no SA_RESTART: waitpid returns EINTR */
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    if (attach_all(pid) != 0) { perror("crashpoint: attach"); return 3; }
    fprintf(log_file, "# attached\n");
    fflush(log_file);
    while (!stop_requested) {
        int status;
        pid_t tid = waitpid(-1, &status, __WALL);
        if (tid < 0) {
            if (errno == EINTR) continue;
            break;  /* ECHILD: every tracee is gone */
        }
        if (WIFEXITED(status) || WIFSIGNALED(status)) continue;
        if (!WIFSTOPPED(status)) continue;
        int sig = WSTOPSIG(status);
        int event = status >> 16;
        if (sig == (SIGTRAP | 0x80)) {
            struct __ptrace_syscall_info info;
            if (ptrace(PTRACE_GET_SYSCALL_INFO, tid, sizeof info, &info) > 0 &&
                info.op == PTRACE_SYSCALL_INFO_ENTRY) {
                char line[2 * PATH_MAX + 96];
                follow_root(tid, &info);
                if (crash_point(tid, &info, line, sizeof line)) {
                    counted++;
                    fprintf(log_file, "%ld\t%s\n", counted, line);
                    fflush(log_file);
                    if (target > 0 && counted == target) {
                        kill_all(tid);
                        fprintf(log_file, "# killed\n");
                        fclose(log_file);
                        return 0;
                    }
                }
            }
            ptrace(PTRACE_SYSCALL, tid, 0, 0);
        } else if (event) {
            if (event == PTRACE_EVENT_CLONE || event == PTRACE_EVENT_FORK || event == PTRACE_EVENT_VFORK) {
                unsigned long child = 0;
                if (ptrace(PTRACE_GETEVENTMSG, tid, 0, &child) == 0) {
                    mark((pid_t)child);
                    pid_t parent = tgid_of(tid);
                    if (tgid_of((pid_t)child) != parent) {  /* a process: it inherits the root */
                        note_tgid((pid_t)child);
                        if (base_of(parent)[0]) set_base((pid_t)child, base_of(parent));
                    }
                }
            }
            ptrace(PTRACE_SYSCALL, tid, 0, 0);  /* an event or group stop: resume */
        } else {
            ptrace(PTRACE_SYSCALL, tid, 0, sig);  /* a signal for the tracee: deliver it */
        }
    }
    fprintf(log_file, "# detached\n");
    fclose(log_file);
    return 0;  /* exiting detaches every tracee, which runs on */
}
