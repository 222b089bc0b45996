/* What a hostile RUN step would try, one system call at a time. Prints "ok" or the errno
 * name, so tests can compare with what docker's default sandbox answers. Built -static. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/if_ether.h>
#include <netinet/in.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <unistd.h>

static int report(long rc) {
  if (rc < 0) {
    printf("%s\n", strerrorname_np(errno));
    return 1;
  }
  printf("ok\n");
  return 0;
}

int main(int argc, char **argv) {
  if (argc < 2) return 2;
  const char *op = argv[1];
  if (!strcmp(op, "keyctl-read") && argc > 2) {
    char buf[256];
    /* KEYCTL_READ = 11 */
    return report(syscall(SYS_keyctl, 11, atol(argv[2]), buf, sizeof buf));
  }
  if (!strcmp(op, "unshare-user")) return report(unshare(CLONE_NEWUSER));
  if (!strcmp(op, "clone-newuser")) {
    long pid = syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0);
    if (pid == 0) _exit(0);
    return report(pid);
  }
  if (!strcmp(op, "clone3")) {
    long args[11] = {0};
    long pid = syscall(SYS_clone3, args, sizeof args);
    if (pid == 0) _exit(0);
    return report(pid);
  }
  if (!strcmp(op, "raw") && argc > 2) return report(syscall(atol(argv[2]), 0, 0, 0, 0, 0, 0));
  if (!strcmp(op, "mount")) return report(mount("none", "/mnt", "tmpfs", 0, 0));
  if (!strcmp(op, "sniff") && argc > 2) {
    /* Every frame on every interface this namespace has, for 3 seconds: is the marker there? */
    int s = socket(AF_PACKET, SOCK_RAW, htons(ETH_P_ALL));
    if (s < 0) return report(s);
    struct timeval tv = {3, 0};
    setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    char buf[65536];
    for (;;) {
      ssize_t n = recv(s, buf, sizeof buf, 0);
      if (n < 0) break;
      if (memmem(buf, n, argv[2], strlen(argv[2]))) {
        printf("seen\n");
        return 0;
      }
    }
    printf("not seen\n");
    return 0;
  }
  return 2;
}
