/*
 * chvsys.h: what the freestanding guest tools (chvblk.c, chvmem.c) share:
 * raw x86_64 Linux system calls, decimal output and parsing, the monotonic
 * clock and the process entry point. No libc: the tools are built with
 * gcc -static -O2 -nostdlib -ffreestanding (benchlib.build_tool), so each
 * adds a few KiB to the initramfs rather than the ~700 KiB of a static
 * glibc binary; each initramfs byte costs guest boot time on this host.
 *
 * A tool defines `static int run(int argc, char **argv)`; its return value
 * is the exit status.
 */
typedef unsigned long u64;
typedef long i64;

#define SYS_read 0
#define SYS_write 1
#define SYS_open 2
#define SYS_close 3
#define SYS_lseek 8
#define SYS_mmap 9
#define SYS_munmap 11
#define SYS_pread64 17
#define SYS_nanosleep 35
#define SYS_socket 41
#define SYS_setsockopt 54
#define SYS_clock_gettime 228
#define SYS_exit_group 231
#define CLOCK_MONOTONIC 1
#define MIB (1UL << 20)

static i64 sys6(i64 n, i64 a, i64 b, i64 c, i64 d, i64 e, i64 f)
{
	i64 ret;
	register i64 r10 __asm__("r10") = d;
	register i64 r8 __asm__("r8") = e;
	register i64 r9 __asm__("r9") = f;
	__asm__ volatile("syscall"
			 : "=a"(ret)
			 : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
			 : "rcx", "r11", "memory");
	return ret;
}

static i64 sys3(i64 n, i64 a, i64 b, i64 c)
{
	return sys6(n, a, b, c, 0, 0, 0);
}

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

/* The decimal number at the start of s (0 if none). */
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

/* Prints "<tag>-ERROR <where> <errno>" and exits 1. */
static void fail_as(const char *tag, const char *where, i64 err)
{
	out(tag);
	out("-ERROR ");
	out(where);
	out(" ");
	out_u64((u64)-err);
	out("\n");
	sys3(SYS_exit_group, 1, 0, 0);
}

static int run(int argc, char **argv);

/* Entry point: the kernel leaves argc at (%rsp), argv right above it. */
__attribute__((used)) static void cstart(i64 *sp)
{
	int argc = (int)sp[0];
	char **argv = (char **)(sp + 1);
	sys3(SYS_exit_group, run(argc, argv), 0, 0);
}

__asm__(".globl _start\n_start:\n\tmov %rsp, %rdi\n\tand $-16, %rsp\n\tcall cstart\n\thlt\n");
