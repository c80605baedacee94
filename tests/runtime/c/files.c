/* Files by capability, driven from argv: each argument is one step "op:arg[:arg]", and
   prints one line per step ("E<errno>" on failure), so tests can compare outcomes. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int fail(void) { printf("E%d\n", errno); return 0; }

static int step(char *op, char *a, char *b) {
    char buf[4096];
    struct stat st;
    if (!strcmp(op, "cat")) {
        FILE *f = fopen(a, "r");
        if (!f) return fail();
        size_t n = fread(buf, 1, sizeof buf - 1, f);
        buf[n] = 0;
        fclose(f);
        printf("%s\n", buf);
    } else if (!strcmp(op, "write") || !strcmp(op, "append")) {
        FILE *f = fopen(a, op[0] == 'w' ? "w" : "a");
        if (!f) return fail();
        fputs(b, f);
        if (fclose(f)) return fail();
        printf("ok\n");
    } else if (!strcmp(op, "ls")) {
        DIR *d = opendir(a);
        if (!d) return fail();
        struct dirent *e;
        char names[64][256];
        int n = 0;
        while ((e = readdir(d)) && n < 64)
            if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
                strcpy(names[n++], e->d_name);
        closedir(d);
        qsort(names, n, 256, (int (*)(const void *, const void *))strcmp);
        for (int i = 0; i < n; i++) printf("%s%s", i ? " " : "", names[i]);
        printf("\n");
    } else if (!strcmp(op, "mkdir")) {
        if (mkdir(a, 0755)) return fail();
        printf("ok\n");
    } else if (!strcmp(op, "rm")) {
        if (unlink(a)) return fail();
        printf("ok\n");
    } else if (!strcmp(op, "rmdir")) {
        if (rmdir(a)) return fail();
        printf("ok\n");
    } else if (!strcmp(op, "mv")) {
        if (rename(a, b)) return fail();
        printf("ok\n");
    } else if (!strcmp(op, "stat") || !strcmp(op, "lstat")) {
        if ((op[0] == 's' ? stat : lstat)(a, &st)) return fail();
        printf("%s %lld\n", S_ISDIR(st.st_mode) ? "dir" : S_ISLNK(st.st_mode) ? "link"
               : S_ISREG(st.st_mode) ? "file" : "other", (long long)st.st_size);
    } else if (!strcmp(op, "fstat")) {
        if (fstat(atoi(a), &st)) return fail();
        printf("%s\n", S_ISFIFO(st.st_mode) ? "fifo" : S_ISREG(st.st_mode) ? "file" : "other");
    } else if (!strcmp(op, "readlink")) {
        ssize_t n = readlink(a, buf, sizeof buf - 1);
        if (n < 0) return fail();
        buf[n] = 0;
        printf("%s\n", buf);
    } else if (!strcmp(op, "access")) {
        if (access(a, b[0] == 'w' ? W_OK : R_OK)) return fail();
        printf("ok\n");
    } else if (!strcmp(op, "open")) {  /* open and keep: prints the fd */
        int fd = open(a, b[0] == 'w' ? O_WRONLY | O_CREAT : O_RDONLY, 0644);
        if (fd < 0) return fail();
        printf("%d\n", fd);
    } else if (!strcmp(op, "close")) {
        if (close(atoi(a))) return fail();
        printf("ok\n");
    } else if (!strcmp(op, "read")) {  /* read from an fd number */
        ssize_t n = read(atoi(a), buf, sizeof buf - 1);
        if (n < 0) return fail();
        buf[n] = 0;
        printf("%s\n", buf);
    } else if (!strcmp(op, "openmany")) {
        int n = 0;
        while (open(a, O_RDONLY) >= 0) n++;
        printf("%d E%d\n", n, errno);
    } else if (!strcmp(op, "dup2out")) {  /* stdout into the file a, then back */
        int fd = open(a, O_WRONLY | O_CREAT | O_TRUNC, 0644), saved = dup(1);
        if (fd < 0 || saved < 0) return fail();
        fflush(stdout);
        dup2(fd, 1);
        printf("%s\n", b);
        fflush(stdout);
        dup2(saved, 1);
        close(fd);
        close(saved);
        printf("ok\n");
    } else if (!strcmp(op, "seek")) {  /* pread and lseek on the file a at offset b */
        int fd = open(a, O_RDONLY);
        if (fd < 0) return fail();
        ssize_t n = pread(fd, buf, 4, atoi(b));
        off_t end = lseek(fd, 0, SEEK_END);
        close(fd);
        if (n < 0) return fail();
        buf[n] = 0;
        printf("%s %lld\n", buf, (long long)end);
    } else if (!strcmp(op, "cd")) {
        if (chdir(a) || !getcwd(buf, sizeof buf)) return fail();
        printf("%s\n", buf);
    } else if (!strcmp(op, "malloc")) {
        void *p = malloc(strtoull(a, 0, 0));
        printf(p ? "ok\n" : "NULL\n");
    } else {
        printf("bad step %s\n", op);
    }
    return 0;
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        char *op = argv[i], *a = strchr(op, ':'), *b = "";
        if (a) {
            *a++ = 0;
            char *c = strchr(a, ':');
            if (c) { *c = 0; b = c + 1; }
        } else {
            a = "";
        }
        step(op, a, b);
    }
    return 0;
}
