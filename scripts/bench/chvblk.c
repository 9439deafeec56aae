/*
 * chvblk: a tiny block benchmark for the guest (and the host ceiling).
 *
 *   chvblk DEVICE READ_MIB WRITE_MIB RAND_OPS [SEED]
 *
 * With O_DIRECT on DEVICE it does, in this order and each timed with
 * CLOCK_MONOTONIC inside this one process (no fork+exec per phase, which
 * costs 1-2 s in the PVM guest):
 *   1. READ_MIB sequential 1 MiB read()s from offset 0  (= dd bs=1M iflag=direct)
 *   2. WRITE_MIB sequential 1 MiB write()s from offset 0 (= dd bs=1M oflag=direct)
 *   3. RAND_OPS pread()s of 4 KiB at random 4 KiB-aligned offsets
 * and prints one line per phase:
 *   CHVBLK <seqread|seqwrite|randread> <bytes or ops> <nanoseconds>
 * (the 1 MiB buffer is faulted in before the first phase, untimed).
 * A phase with a count of 0 is skipped. Errors print "CHVBLK-ERROR <where> <errno>".
 *
 * Built freestanding (no libc: gcc -static -O2 -nostdlib) so it adds a few
 * KiB to the initramfs rather than the ~700 KiB of a static glibc binary;
 * each initramfs byte costs guest boot time on this host.
 */
typedef unsigned long u64;
typedef long i64;

#define SYS_read 0
#define SYS_write 1
#define SYS_open 2
#define SYS_lseek 8
#define SYS_pread64 17
#define SYS_clock_gettime 228
#define SYS_exit_group 231
#define O_RDWR 02
#define O_DIRECT 040000
#define CLOCK_MONOTONIC 1
#define SEEK_SET 0
#define SEEK_END 2
#define MIB (1UL << 20)
#define BLK 4096UL

static i64 sys3(i64 n, i64 a, i64 b, i64 c)
{
	i64 ret;
	__asm__ volatile("syscall" : "=a"(ret) : "a"(n), "D"(a), "S"(b), "d"(c) : "rcx", "r11", "memory");
	return ret;
}

static i64 sys4(i64 n, i64 a, i64 b, i64 c, i64 d)
{
	i64 ret;
	register i64 r10 __asm__("r10") = d;
	__asm__ volatile("syscall" : "=a"(ret) : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10) : "rcx", "r11", "memory");
	return ret;
}

static char buf[MIB] __attribute__((aligned(4096)));

static u64 slen(const char *s)
{
	u64 n = 0;
	while (s[n])
		n++;
	return n;
}

static void out(const char *s)
{
	sys3(SYS_write, 1, (i64)s, (i64)slen(s));
}

static void out_u64(u64 v)
{
	char d[24];
	int i = 23;
	d[i] = 0;
	do {
		d[--i] = (char)('0' + v % 10);
		v /= 10;
	} while (v && i > 0);
	out(d + i);
}

static u64 parse(const char *s)
{
	u64 v = 0;
	while (*s >= '0' && *s <= '9')
		v = v * 10 + (u64)(*s++ - '0');
	return v;
}

static u64 now_ns(void)
{
	i64 ts[2] = {0, 0};
	sys3(SYS_clock_gettime, CLOCK_MONOTONIC, (i64)ts, 0);
	return (u64)ts[0] * 1000000000UL + (u64)ts[1];
}

static void fail(const char *where, i64 err)
{
	out("CHVBLK-ERROR ");
	out(where);
	out(" ");
	out_u64((u64)-err);
	out("\n");
	sys3(SYS_exit_group, 1, 0, 0);
}

static void report(const char *what, u64 n, u64 ns)
{
	out("CHVBLK ");
	out(what);
	out(" ");
	out_u64(n);
	out(" ");
	out_u64(ns);
	out("\n");
}

/* Sequential 1 MiB transfers from offset 0; returns bytes moved. */
static u64 seq(i64 fd, u64 mib, int write)
{
	u64 done = 0;
	if (sys3(SYS_lseek, fd, 0, SEEK_SET) < 0)
		fail("lseek", -22);
	for (u64 i = 0; i < mib; i++) {
		i64 r = sys3(write ? SYS_write : SYS_read, fd, (i64)buf, (i64)MIB);
		if (r < 0)
			fail(write ? "write" : "read", r);
		if (r == 0)
			break;
		done += (u64)r;
	}
	return done;
}

static int run(int argc, char **argv)
{
	if (argc < 5) {
		out("usage: chvblk DEVICE READ_MIB WRITE_MIB RAND_OPS [SEED]\n");
		return 2;
	}
	u64 rmib = parse(argv[2]), wmib = parse(argv[3]), ops = parse(argv[4]);
	u64 x = argc > 5 ? parse(argv[5]) : 88172645463325252UL;
	i64 fd = sys3(SYS_open, (i64)argv[1], O_RDWR | O_DIRECT, 0);
	if (fd < 0)
		fail("open", fd);
	i64 size = sys3(SYS_lseek, fd, 0, SEEK_END);
	if (size < (i64)BLK)
		fail("size", size < 0 ? size : -22);
	u64 blocks = (u64)size / BLK, t, n;

	/* Fault the buffer in first: each guest page fault is slow here, and
	 * O_DIRECT would otherwise pay for 256 of them inside the first timing. */
	for (u64 i = 0; i < MIB; i += BLK)
		((volatile char *)buf)[i] = 0;

	if (rmib) {
		t = now_ns();
		n = seq(fd, rmib, 0);
		report("seqread", n, now_ns() - t);
	}
	if (wmib) {
		t = now_ns();
		n = seq(fd, wmib, 1);
		report("seqwrite", n, now_ns() - t);
	}
	if (ops) {
		if (x == 0)
			x = 1;
		t = now_ns();
		for (u64 i = 0; i < ops; i++) {
			x ^= x << 13; /* xorshift64 */
			x ^= x >> 7;
			x ^= x << 17;
			i64 r = sys4(SYS_pread64, fd, (i64)buf, (i64)BLK, (i64)((x % blocks) * BLK));
			if (r != (i64)BLK)
				fail("pread", r < 0 ? r : -5);
		}
		report("randread", ops, now_ns() - t);
	}
	return 0;
}

/* Entry point: the kernel leaves argc at (%rsp), argv right above it. */
__attribute__((used)) static void cstart(i64 *sp)
{
	int argc = (int)sp[0];
	char **argv = (char **)(sp + 1);
	sys3(SYS_exit_group, run(argc, argv), 0, 0);
}

__asm__(".globl _start\n_start:\n\tmov %rsp, %rdi\n\tand $-16, %rsp\n\tcall cstart\n\thlt\n");
