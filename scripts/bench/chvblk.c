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
 * Built freestanding, see chvsys.h.
 */
#include "chvsys.h"

#define O_RDWR 02
#define O_DIRECT 040000
#define SEEK_SET 0
#define SEEK_END 2
#define BLK 4096UL

static char buf[MIB] __attribute__((aligned(4096)));

static void fail(const char *where, i64 err)
{
	fail_as("CHVBLK", where, err);
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
			i64 r = sys6(SYS_pread64, fd, (i64)buf, (i64)BLK, (i64)((x % blocks) * BLK), 0, 0);
			if (r != (i64)BLK)
				fail("pread", r < 0 ? r : -5);
		}
		report("randread", ops, now_ns() - t);
	}
	return 0;
}
