/*
 * vsock: a tiny AF_VSOCK tool for the Linux guest of the chv end-to-end
 * tests (busybox has none). Built by tests/tests/vsock_ratelimit_linux.rs
 * with `gcc -static -O2 -pthread` and put on an ext4 data disk.
 *
 *   vsock listen PORT N     accept N connections on PORT, echo each one
 *                           back until EOF in its own thread, then print
 *                           "VSOCK-LISTEN-DONE conns=N bytes=B errors=E".
 *                           Prints "VSOCK-LISTEN-READY PORT" once listening.
 *   vsock connect CID PORT  connect, send stdin, then copy everything
 *                           received to stdout until EOF.
 *
 * The host side of a hybrid vsock (the VMM's Unix socket), for hosts
 * without a tool that speaks it (the aarch64 L1 machine's busybox):
 *
 *   vsock unix-connect PATH PORT   connect to PATH, send "CONNECT PORT",
 *                           check the "OK " answer, send stdin, then copy
 *                           to stdout as many bytes as were sent (an echo).
 *   vsock unix-reply PATH   listen on PATH (the VMM connects there for
 *                           guest connections to that port), accept one
 *                           connection, read one line and answer
 *                           "REPLY:<line>" before closing.
 *
 * Every run is bounded by an alarm (TIMEOUT_S) so a stuck transfer ends
 * with "VSOCK-TIMEOUT" and exit code 3 instead of hanging the guest.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

#define TIMEOUT_S 600
#define BUF_SIZE (64 * 1024)
#define MAX_CONNS 64

static void on_alarm(int sig)
{
	static const char msg[] = "VSOCK-TIMEOUT\n";
	(void)sig;
	(void)!write(1, msg, sizeof(msg) - 1);
	_exit(3);
}

/* Writes all of buf; returns 0, or -1 on error. */
static int write_all(int fd, const char *buf, size_t len)
{
	while (len > 0) {
		ssize_t n = write(fd, buf, len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		buf += n;
		len -= (size_t)n;
	}
	return 0;
}

struct conn {
	pthread_t thread;
	int fd;
	unsigned long long bytes;
	int error;
};

/* Echoes one connection back until EOF. */
static void *echo(void *arg)
{
	struct conn *c = arg;
	char *buf = malloc(BUF_SIZE);
	if (!buf) {
		c->error = ENOMEM;
		return NULL;
	}
	for (;;) {
		ssize_t n = read(c->fd, buf, BUF_SIZE);
		if (n == 0)
			break;
		if (n < 0) {
			if (errno == EINTR)
				continue;
			/* The host closing after its last read may reset us. */
			if (errno != ECONNRESET)
				c->error = errno;
			break;
		}
		if (write_all(c->fd, buf, (size_t)n) < 0) {
			if (errno != ECONNRESET && errno != EPIPE)
				c->error = errno;
			break;
		}
		c->bytes += (unsigned long long)n;
	}
	free(buf);
	close(c->fd);
	return NULL;
}

/* Sends all of stdin to fd (buf holds BUF_SIZE); the byte count or -1. */
static ssize_t send_stdin(int fd, char *buf)
{
	ssize_t sent = 0;

	for (;;) {
		ssize_t n = read(0, buf, BUF_SIZE);
		if (n == 0)
			return sent;
		if (n < 0) {
			if (errno == EINTR)
				continue;
			perror("vsock: read stdin");
			return -1;
		}
		if (write_all(fd, buf, (size_t)n) < 0) {
			perror("vsock: send");
			return -1;
		}
		sent += n;
	}
}

static int do_listen(unsigned port, int count)
{
	static struct conn conns[MAX_CONNS];
	struct sockaddr_vm addr;
	int fd, i, errors = 0;
	unsigned long long total = 0;

	if (count < 1 || count > MAX_CONNS) {
		fprintf(stderr, "vsock: N must be 1..%d\n", MAX_CONNS);
		return 2;
	}
	fd = socket(AF_VSOCK, SOCK_STREAM, 0);
	if (fd < 0) {
		perror("vsock: socket");
		return 1;
	}
	memset(&addr, 0, sizeof(addr));
	addr.svm_family = AF_VSOCK;
	addr.svm_cid = VMADDR_CID_ANY;
	addr.svm_port = port;
	if (bind(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
		perror("vsock: bind");
		return 1;
	}
	if (listen(fd, count) < 0) {
		perror("vsock: listen");
		return 1;
	}
	printf("VSOCK-LISTEN-READY %u\n", port);
	fflush(stdout);
	for (i = 0; i < count; i++) {
		int c = accept(fd, NULL, NULL);
		if (c < 0) {
			if (errno == EINTR) {
				i--;
				continue;
			}
			perror("vsock: accept");
			return 1;
		}
		conns[i].fd = c;
		if (pthread_create(&conns[i].thread, NULL, echo, &conns[i]) != 0) {
			fprintf(stderr, "vsock: pthread_create failed\n");
			return 1;
		}
	}
	for (i = 0; i < count; i++) {
		pthread_join(conns[i].thread, NULL);
		total += conns[i].bytes;
		printf("VSOCK-CONN %d bytes=%llu error=%s\n", i, conns[i].bytes,
		       conns[i].error ? strerror(conns[i].error) : "none");
		if (conns[i].error)
			errors++;
	}
	close(fd);
	printf("VSOCK-LISTEN-DONE conns=%d bytes=%llu errors=%d\n", count, total, errors);
	fflush(stdout);
	return errors ? 1 : 0;
}

static int do_connect(unsigned cid, unsigned port)
{
	struct sockaddr_vm addr;
	char *buf = malloc(BUF_SIZE);
	int fd;

	if (!buf)
		return 1;
	fd = socket(AF_VSOCK, SOCK_STREAM, 0);
	if (fd < 0) {
		perror("vsock: socket");
		return 1;
	}
	memset(&addr, 0, sizeof(addr));
	addr.svm_family = AF_VSOCK;
	addr.svm_cid = cid;
	addr.svm_port = port;
	if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
		perror("vsock: connect");
		return 1;
	}
	if (send_stdin(fd, buf) < 0)
		return 1;
	for (;;) {
		ssize_t n = read(fd, buf, BUF_SIZE);
		if (n == 0)
			break;
		if (n < 0) {
			if (errno == EINTR)
				continue;
			perror("vsock: recv");
			return 1;
		}
		if (write_all(1, buf, (size_t)n) < 0)
			return 1;
	}
	close(fd);
	return 0;
}

/* A stream socket connected to, or listening on, the Unix socket PATH. */
static int unix_socket(const char *path, int listening)
{
	struct sockaddr_un addr;
	int fd = socket(AF_UNIX, SOCK_STREAM, 0);

	if (fd < 0 || strlen(path) >= sizeof(addr.sun_path)) {
		fprintf(stderr, "vsock: unix socket %s\n", path);
		return -1;
	}
	memset(&addr, 0, sizeof(addr));
	addr.sun_family = AF_UNIX;
	strcpy(addr.sun_path, path);
	if (listening) {
		unlink(path);
		if (bind(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0 || listen(fd, 1) < 0) {
			perror("vsock: bind/listen");
			return -1;
		}
	} else if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
		perror("vsock: connect");
		return -1;
	}
	return fd;
}

/* Reads one line (up to len - 1 bytes, newline dropped); its length or -1. */
static int read_line(int fd, char *buf, size_t len)
{
	size_t n = 0;

	while (n + 1 < len) {
		ssize_t r = read(fd, buf + n, 1);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return -1;
		if (buf[n] == '\n')
			break;
		n++;
	}
	buf[n] = 0;
	return (int)n;
}

static int do_unix_connect(const char *path, unsigned port)
{
	char line[128];
	char *buf = malloc(BUF_SIZE);
	ssize_t sent, got = 0;
	int fd = unix_socket(path, 0);

	if (fd < 0 || !buf)
		return 1;
	snprintf(line, sizeof(line), "CONNECT %u\n", port);
	if (write_all(fd, line, strlen(line)) < 0 || read_line(fd, line, sizeof(line)) < 0 ||
	    strncmp(line, "OK ", 3) != 0) {
		fprintf(stderr, "vsock: no OK for CONNECT %u\n", port);
		return 1;
	}
	sent = send_stdin(fd, buf);
	if (sent < 0)
		return 1;
	while (got < sent) {
		ssize_t n = read(fd, buf, BUF_SIZE);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			fprintf(stderr, "vsock: echo ended after %zd of %zd bytes\n", got, sent);
			return 1;
		}
		if (write_all(1, buf, (size_t)n) < 0)
			return 1;
		got += n;
	}
	close(fd);
	return 0;
}

static int do_unix_reply(const char *path)
{
	char line[256], reply[300];
	int c, fd = unix_socket(path, 1);

	if (fd < 0)
		return 1;
	printf("VSOCK-REPLY-READY %s\n", path);
	fflush(stdout);
	while ((c = accept(fd, NULL, NULL)) < 0 && errno == EINTR)
		;
	if (c < 0 || read_line(c, line, sizeof(line)) < 0) {
		perror("vsock: accept/read");
		return 1;
	}
	snprintf(reply, sizeof(reply), "REPLY:%s\n", line);
	if (write_all(c, reply, strlen(reply)) < 0)
		return 1;
	printf("VSOCK-REPLY-SENT %s\n", line);
	close(c);
	close(fd);
	return 0;
}

int main(int argc, char **argv)
{
	signal(SIGALRM, on_alarm);
	signal(SIGPIPE, SIG_IGN);
	alarm(TIMEOUT_S);
	if (argc == 4 && strcmp(argv[1], "listen") == 0)
		return do_listen((unsigned)strtoul(argv[2], NULL, 0), atoi(argv[3]));
	if (argc == 4 && strcmp(argv[1], "connect") == 0)
		return do_connect((unsigned)strtoul(argv[2], NULL, 0),
				  (unsigned)strtoul(argv[3], NULL, 0));
	if (argc == 4 && strcmp(argv[1], "unix-connect") == 0)
		return do_unix_connect(argv[2], (unsigned)strtoul(argv[3], NULL, 0));
	if (argc == 3 && strcmp(argv[1], "unix-reply") == 0)
		return do_unix_reply(argv[2]);
	fprintf(stderr, "usage: vsock listen PORT N | vsock connect CID PORT | "
			"vsock unix-connect PATH PORT | vsock unix-reply PATH\n");
	return 2;
}
