/*
 * chvmem: makes the guest touch memory and free it again, step by step at
 * the host's pace, for the memory benchmark (memory.py).
 *
 *   chvmem MIB ring|anon [GROW_MIB]
 *
 * Each step starts when a line arrives on stdin (the serial console; the
 * host writes it once it has measured the previous step):
 *   prints CHVMEM-READY memtotal=KIB                               then waits
 *   with GROW_MIB: polls /proc/meminfo every 200 ms until MemTotal grew by
 *   GROW_MIB MiB (virtio-mem plugged and the guest onlined the memory),
 *   prints CHVMEM-PLUGGED memtotal=KIB                             then waits
 *   touches MIB MiB, prints CHVMEM-TOUCHED <bytes> <ns>            then waits
 *   frees them, prints CHVMEM-FREED <ns>                           then waits
 * and exits on the next line.
 *
 * ring: an AF_PACKET receive ring of MIB/4 blocks of 4 MiB. The guest
 * kernel allocates each block as one high-order page and zeroes it, so the
 * 64 MiB cost about 0.6 ms per 4 KiB page on this PVM host; close() frees
 * the blocks. anon: mmap(MAP_POPULATE) of private anonymous memory, freed
 * with munmap(); about 1 ms per page (one page allocation each). A tmpfs
 * file (dd) cost about 2.5 ms per page.
 *
 * Errors print "CHVMEM-ERROR <where> <errno>". Built freestanding, see chvsys.h.
 */
#include "chvsys.h"

#define AF_PACKET 17
#define SOCK_RAW 3
#define SOL_PACKET 263
#define PACKET_RX_RING 5
#define PROT_RW 3
#define MAP_PRIVATE_ANON 0x22
#define MAP_POPULATE 0x8000
#define RING_BLOCK (4 * MIB)

static char buf[8192];

static void fail(const char *where, i64 err)
{
	fail_as("CHVMEM", where, err);
}

/* Blocks until a whole line arrived on stdin. */
static void wait_line(void)
{
	for (;;) {
		i64 n = sys3(SYS_read, 0, (i64)buf, sizeof(buf));
		if (n <= 0)
			fail("stdin", n < 0 ? n : -61);
		for (i64 i = 0; i < n; i++)
			if (buf[i] == '\n')
				return;
	}
}

static u64 memtotal_kib(void)
{
	i64 fd = sys3(SYS_open, (i64)"/proc/meminfo", 0, 0);
	if (fd < 0)
		fail("meminfo", fd);
	i64 n = sys3(SYS_read, fd, (i64)buf, sizeof(buf) - 1);
	sys3(SYS_close, fd, 0, 0);
	if (n <= 0)
		fail("meminfo", n < 0 ? n : -61);
	buf[n] = 0;
	/* The first line: "MemTotal:       117348 kB". */
	const char *p = buf;
	while (*p && (*p < '0' || *p > '9'))
		p++;
	return parse(p);
}

/* Prints CHVMEM-<what><a>[ <b>] and waits for the host's line. */
static void step(const char *what, u64 a, u64 b, int two)
{
	out("CHVMEM-");
	out(what);
	out_u64(a);
	if (two) {
		out(" ");
		out_u64(b);
	}
	out("\n");
	wait_line();
}

static void sleep_ms(u64 ms)
{
	i64 ts[2] = {(i64)(ms / 1000), (i64)(ms % 1000) * 1000000};
	sys3(SYS_nanosleep, (i64)ts, 0, 0);
}

static int run(int argc, char **argv)
{
	if (argc < 3 || (argv[2][0] != 'r' && argv[2][0] != 'a')) {
		out("usage: chvmem MIB ring|anon [GROW_MIB]\n");
		return 2;
	}
	u64 len = parse(argv[1]) * MIB, grow = argc > 3 ? parse(argv[3]) * 1024 : 0;
	int ring = argv[2][0] == 'r';
	if (len == 0 || (ring && len % RING_BLOCK))
		fail("size", -22);
	u64 start = memtotal_kib();
	step("READY memtotal=", start, 0, 0);
	if (grow) {
		u64 now;
		while ((now = memtotal_kib()) < start + grow)
			sleep_ms(200);
		step("PLUGGED memtotal=", now, 0, 0);
	}

	u64 t = now_ns();
	i64 handle;
	if (ring) {
		handle = sys3(SYS_socket, AF_PACKET, SOCK_RAW, 0);
		if (handle < 0)
			fail("socket", handle);
		/* struct tpacket_req: block size, blocks, frame size, frames. */
		unsigned int req[4] = {RING_BLOCK, (unsigned int)(len / RING_BLOCK), RING_BLOCK,
				       (unsigned int)(len / RING_BLOCK)};
		i64 r = sys6(SYS_setsockopt, handle, SOL_PACKET, PACKET_RX_RING, (i64)req, sizeof(req), 0);
		if (r < 0)
			fail("PACKET_RX_RING", r);
	} else {
		handle = sys6(SYS_mmap, 0, (i64)len, PROT_RW, MAP_PRIVATE_ANON | MAP_POPULATE, -1, 0);
		if (handle < 0 && handle > -4096)
			fail("mmap", handle);
	}
	step("TOUCHED ", len, now_ns() - t, 1);

	t = now_ns();
	i64 r = ring ? sys3(SYS_close, handle, 0, 0) : sys3(SYS_munmap, handle, (i64)len, 0);
	if (r < 0)
		fail("free", r);
	step("FREED ", now_ns() - t, 0, 0);
	return 0;
}
