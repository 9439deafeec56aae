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
	for (;;) {
		ssize_t n = read(0, buf, BUF_SIZE);
		if (n == 0)
			break;
		if (n < 0) {
			if (errno == EINTR)
				continue;
			perror("vsock: read stdin");
			return 1;
		}
		if (write_all(fd, buf, (size_t)n) < 0) {
			perror("vsock: send");
			return 1;
		}
	}
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
	fprintf(stderr, "usage: vsock listen PORT N | vsock connect CID PORT\n");
	return 2;
}
