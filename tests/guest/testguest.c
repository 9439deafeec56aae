/*
 * chv test guest: a tiny freestanding x86_64 program that chv boots through
 * the Linux 64-bit boot protocol. It reads `test=<name>` from the kernel
 * command line, runs that scenario and reports on COM1:
 *
 *   TESTGUEST-START                  always, first
 *   ...scenario output...
 *   TESTGUEST-PASS <name>            when the guest itself can judge success
 *   TESTGUEST-FAIL <name> <why>      when it can judge failure
 *
 * The host side (tests/tests/testguest.rs) checks the exact output.
 */

#include "guest.h"

/* Offsets into the Linux boot_params ("zero page"). */
#define BP_E820_ENTRIES 0x1e8
#define BP_CMD_LINE_PTR 0x228
#define BP_E820_TABLE 0x2d0
#define E820_MAX 128
#define E820_RAM 1

#define COM1 0x3f8
#define CMOS_INDEX 0x70
#define CMOS_DATA 0x71
#define ACPI_SLEEP_CTL 0x3c0
#define I8042_CMD 0x64

static void halt_forever(void)
{
    for (;;)
        __asm__ volatile("cli; hlt");
}

/* ---- console ---------------------------------------------------------- */

void putc_com1(char c)
{
    /* Wait for THR empty (LSR bit 5); bounded so a broken UART cannot hang us. */
    for (u32 i = 0; i < 1000000 && !(inb(COM1 + 5) & 0x20); i++)
        ;
    outb(COM1, (u8)c);
}

void puts_(const char *s)
{
    while (*s)
        putc_com1(*s++);
}

void put_dec(u64 v)
{
    char buf[21];
    int i = 20;
    buf[i] = 0;
    do {
        buf[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    puts_(&buf[i]);
}

/* Zero-padded decimal with a fixed width. */
static void put_dec_w(u64 v, int width)
{
    char buf[21];
    int i = 20;
    buf[i] = 0;
    while (width-- > 0 || v) {
        buf[--i] = (char)('0' + v % 10);
        v /= 10;
        if (i == 0)
            break;
    }
    puts_(&buf[i]);
}

void put_hex32(u32 v)
{
    static const char digits[] = "0123456789abcdef";
    for (int shift = 28; shift >= 0; shift -= 4)
        putc_com1(digits[(v >> shift) & 0xf]);
}

void put_hex8(u8 v)
{
    static const char digits[] = "0123456789abcdef";
    putc_com1(digits[v >> 4]);
    putc_com1(digits[v & 0xf]);
}

void put_hex16(u16 v)
{
    put_hex8((u8)(v >> 8));
    put_hex8((u8)v);
}

void put_hex64(u64 v)
{
    put_hex32((u32)(v >> 32));
    put_hex32((u32)v);
}

/* gcc may emit calls to these even in freestanding code. */
void *memset(void *d, int c, u64 n)
{
    volatile u8 *p = d;
    while (n--)
        *p++ = (u8)c;
    return d;
}

void *memcpy(void *d, const void *s, u64 n)
{
    volatile u8 *p = d;
    const u8 *q = s;
    while (n--)
        *p++ = *q++;
    return d;
}

void *memset_(void *d, int c, u64 n) { return memset(d, c, n); }

static void cpuid(u32 leaf, u32 *a, u32 *b, u32 *c, u32 *d)
{
    __asm__ volatile("cpuid" : "=a"(*a), "=b"(*b), "=c"(*c), "=d"(*d) : "a"(leaf), "c"(0));
}

u64 tsc_per_ms(void)
{
    static u64 cached;
    if (cached)
        return cached;
    u32 a, b, c, d;
    cpuid(0, &a, &b, &c, &d);
    cached = 3000000; /* assume 3 GHz when CPUID does not say */
    if (a >= 0x16) {
        cpuid(0x16, &a, &b, &c, &d);
        if (a >= 500 && a < 10000)
            cached = (u64)a * 1000; /* base frequency in MHz */
    }
    return cached;
}

void delay_ms(u32 ms)
{
    u64 end = rdtsc() + (u64)ms * tsc_per_ms();
    while (rdtsc() < end)
        __asm__ volatile("pause");
}

const char *g_name = "?";
static const char *g_cmdline;

void pass(void)
{
    puts_("TESTGUEST-PASS ");
    puts_(g_name);
    puts_("\n");
}

void fail(const char *why)
{
    puts_("TESTGUEST-FAIL ");
    puts_(g_name);
    puts_(" ");
    puts_(why);
    puts_("\n");
}

/* ---- command line ------------------------------------------------------ */

int streq(const char *a, const char *b)
{
    while (*a && *a == *b) {
        a++;
        b++;
    }
    return *a == *b;
}

/* Does the word at p start with `key=`? Returns the value start or 0. */
static const char *key_at(const char *p, const char *key)
{
    while (*key && *p == *key) {
        p++;
        key++;
    }
    return (!*key && *p == '=') ? p + 1 : 0;
}

/* Copy the value of `key=` into out (NUL-terminated); empty when absent. */
static void find_value(const char *cmdline, const char *key, char *out, int cap)
{
    const char *p = cmdline;
    out[0] = 0;
    if (!p)
        return;
    while (*p) {
        while (*p == ' ')
            p++;
        const char *v = key_at(p, key);
        if (v) {
            int n = 0;
            p = v;
            while (*p && *p != ' ' && n < cap - 1)
                out[n++] = *p++;
            out[n] = 0;
            return;
        }
        while (*p && *p != ' ')
            p++;
    }
}

void cmdline_value(const char *key, char *out, int cap) { find_value(g_cmdline, key, out, cap); }

/* ---- scenarios --------------------------------------------------------- */

static void test_serial(void)
{
    puts_("SERIAL-ASCII ");
    for (char c = ' '; c <= '~'; c++)
        putc_com1(c);
    puts_("\nSERIAL-LONG ");
    for (int i = 0; i < 1024; i++)
        putc_com1((char)('a' + i % 26));
    puts_("\n");
    pass();
}

/* Reads one line from COM1 (polling LSR data-ready, bounded) and echoes it
 * back as "ECHO <line>": exercises host input through a console backend. */
static void test_echo(void)
{
    char line[64];
    int n = 0;
    puts_("ECHO-READY\n");
    for (u64 spins = 0; spins < 400000000ull && n < 63; spins++) {
        if (!(inb(COM1 + 5) & 0x01))
            continue;
        char c = (char)inb(COM1);
        if (c == '\n' || c == '\r')
            break;
        line[n++] = c;
    }
    line[n] = 0;
    puts_("ECHO ");
    puts_(line);
    puts_("\n");
    pass();
}

static u8 cmos_read(u8 reg)
{
    outb(CMOS_INDEX, reg);
    return inb(CMOS_DATA);
}

static void cmos_write(u8 reg, u8 v)
{
    outb(CMOS_INDEX, reg);
    outb(CMOS_DATA, v);
}

static u32 bcd(u8 v) { return (u32)(v >> 4) * 10 + (v & 0xf); }

struct rtc {
    u8 sec, min, hour, day, mon, year, century;
};

static void rtc_snapshot(struct rtc *t)
{
    /* Wait while an update is in progress (status A bit 7). */
    for (u32 i = 0; i < 10000000 && (cmos_read(0x0a) & 0x80); i++)
        ;
    t->sec = cmos_read(0x00);
    t->min = cmos_read(0x02);
    t->hour = cmos_read(0x04);
    t->day = cmos_read(0x07);
    t->mon = cmos_read(0x08);
    t->year = cmos_read(0x09);
    t->century = cmos_read(0x32);
}

static void test_cmos(void)
{
    struct rtc a, b;
    int tries = 0;
    /* Read until two snapshots agree, so we never mix two seconds. */
    do {
        rtc_snapshot(&a);
        rtc_snapshot(&b);
    } while (++tries < 10 && (a.sec != b.sec || a.min != b.min || a.hour != b.hour ||
                              a.day != b.day || a.mon != b.mon || a.year != b.year));
    u8 status_b = cmos_read(0x0b);
    int binary = status_b & 0x04;
    int h24 = status_b & 0x02;
    u32 pm = b.hour & 0x80;
    u8 hour = b.hour & 0x7f;
    u32 sec = binary ? b.sec : bcd(b.sec);
    u32 min = binary ? b.min : bcd(b.min);
    u32 hr = binary ? hour : bcd(hour);
    u32 day = binary ? b.day : bcd(b.day);
    u32 mon = binary ? b.mon : bcd(b.mon);
    u32 yr = binary ? b.year : bcd(b.year);
    u32 cent = binary ? b.century : bcd(b.century);
    if (!h24) {
        hr %= 12;
        if (pm)
            hr += 12;
    }
    if (cent < 19 || cent > 22)
        cent = 20;
    puts_("CMOS-TIME ");
    put_dec_w(cent * 100 + yr, 4);
    puts_("-");
    put_dec_w(mon, 2);
    puts_("-");
    put_dec_w(day, 2);
    puts_(" ");
    put_dec_w(hr, 2);
    puts_(":");
    put_dec_w(min, 2);
    puts_(":");
    put_dec_w(sec, 2);
    puts_("\n");

    /* NVRAM: two different patterns must both read back. */
    cmos_write(0x40, 0x5a);
    u8 r1 = cmos_read(0x40);
    cmos_write(0x40, 0xa5);
    u8 r2 = cmos_read(0x40);
    puts_("CMOS-NVRAM ");
    put_hex32(((u32)r1 << 8) | r2);
    puts_("\n");
    if (r1 != 0x5a || r2 != 0xa5) {
        fail("nvram-readback");
        return;
    }
    pass();
}

void acpi_poweroff(void)
{
    /* SLP_TYP = 5 (S5) in bits 2-4, SLP_EN in bit 5. */
    outb(ACPI_SLEEP_CTL, (5 << 2) | (1 << 5));
}

static void test_poweroff(void)
{
    acpi_poweroff();
    fail("still-running-after-poweroff");
}

static void test_reset_i8042(void)
{
    outb(I8042_CMD, 0xfe);
    fail("still-running-after-reset");
}

static void test_reset_acpi(void)
{
    /* The FADT reset register: chv's sleep-control port with value 1. */
    outb(ACPI_SLEEP_CTL, 1);
    fail("still-running-after-reset");
}

static void test_hlt(void)
{
    puts_("HLT-NOW\n");
    __asm__ volatile("cli; hlt");
    fail("woke-from-hlt");
}

/* Would an access of `size` bytes at `port` touch a port we must leave alone? */
static int port_excluded(u32 port, u32 size)
{
    for (u32 p = port; p < port + size; p++) {
        if (p == ACPI_SLEEP_CTL || p == I8042_CMD || (p >= 0xcf8 && p <= 0xcff))
            return 1;
        /* Port 0x92 bit 0 is the "fast reset" of System Control Port A. */
        if (p == 0x92)
            return 1;
    }
    return 0;
}

/* Writes to COM1 would garble or reprogram our own console. */
static int port_is_com1(u32 port, u32 size)
{
    return port + size > COM1 && port < COM1 + 8;
}

static void mmio_poke(u64 addr)
{
    volatile u8 *p8 = (volatile u8 *)addr;
    volatile u16 *p16 = (volatile u16 *)addr;
    volatile u32 *p32 = (volatile u32 *)addr;
    volatile u64 *p64 = (volatile u64 *)addr;
    (void)*p8;
    (void)*p16;
    (void)*p32;
    (void)*p64;
    *p8 = 0xa5;
    *p16 = 0xa5a5;
    *p32 = 0xa5a5a5a5;
    *p64 = 0xa5a5a5a5a5a5a5a5ul;
}

static void test_hostile_io(void)
{
    u32 seed = 0x12345678;
    for (u32 port = 0; port <= 0xffff; port++) {
        for (u32 size = 1; size <= 4; size *= 2) {
            if (port_excluded(port, size))
                continue;
            seed = seed * 1103515245u + 12345u;
            if (size == 1)
                (void)inb((u16)port);
            else if (size == 2)
                (void)inw((u16)port);
            else
                (void)inl((u16)port);
            if (port_is_com1(port, size))
                continue;
            if (size == 1)
                outb((u16)port, (u8)(seed >> 16));
            else if (size == 2)
                outw((u16)port, (u16)(seed >> 8));
            else
                outl((u16)port, seed);
        }
        if ((port & 0x3fff) == 0x3fff) {
            puts_("HOSTILE-PIO ");
            put_hex32(port);
            puts_("\n");
        }
    }

    /* String I/O: one exit carrying several elements. */
    static u8 buf[64];
    u64 n = sizeof(buf), d = (u64)buf;
    __asm__ volatile("rep insb" : "+D"(d), "+c"(n) : "d"((u16)0x5678) : "memory");
    n = sizeof(buf);
    u64 s = (u64)buf;
    __asm__ volatile("rep outsb" : "+S"(s), "+c"(n) : "d"((u16)0x5678) : "memory");

    /* MMIO in the 32-bit hole where nothing is mapped (not LAPIC/IOAPIC). */
    static const u64 holes[] = { 0xd0000000ul, 0xfebff000ul, 0xfed00000ul, 0xfed40000ul };
    for (u32 i = 0; i < sizeof(holes) / sizeof(holes[0]); i++)
        mmio_poke(holes[i]);
    puts_("HOSTILE-MMIO done\n");

    /* Restore the UART to 8N1, no loopback, in case anything reached it. */
    outb(COM1 + 3, 0x03);
    outb(COM1 + 1, 0x00);
    outb(COM1 + 4, 0x03);
    pass();
    acpi_poweroff();
    fail("still-running-after-poweroff");
}

static void test_memsize(const u8 *bp)
{
    u32 n = bp[BP_E820_ENTRIES];
    u64 total = 0;
    if (n > E820_MAX) {
        fail("too-many-e820-entries");
        return;
    }
    for (u32 i = 0; i < n; i++) {
        const u8 *e = bp + BP_E820_TABLE + 20 * i;
        u64 addr = *(const u64 *)e;
        u64 size = *(const u64 *)(e + 8);
        u32 type = *(const u32 *)(e + 16);
        puts_("E820 ");
        put_hex32((u32)(addr >> 32));
        put_hex32((u32)addr);
        puts_(" ");
        put_hex32((u32)(size >> 32));
        put_hex32((u32)size);
        puts_(" ");
        put_dec(type);
        puts_("\n");
        if (type == E820_RAM)
            total += size;
    }
    puts_("E820-RAM-TOTAL ");
    put_dec(total);
    puts_("\n");
    if (n == 0) {
        fail("no-e820-entries");
        return;
    }
    pass();
}

static void put_regchars(u32 r)
{
    for (int i = 0; i < 4; i++) {
        char ch = (char)(r >> (8 * i));
        if (ch >= ' ' && ch <= '~')
            putc_com1(ch);
    }
}

static void test_cpuid(void)
{
    u32 a, b, c, d;
    cpuid(1, &a, &b, &c, &d);
    puts_("CPUID-1 ECX=");
    put_hex32(c);
    puts_(" EDX=");
    put_hex32(d);
    puts_("\n");
    u32 hv = c & (1u << 31);
    cpuid(0x40000000, &a, &b, &c, &d);
    puts_("CPUID-HV EAX=");
    put_hex32(a);
    puts_(" SIG=");
    put_regchars(b);
    put_regchars(c);
    put_regchars(d);
    puts_("\n");
    if (!hv) {
        fail("no-hypervisor-bit");
        return;
    }
    pass();
}

static void test_triple_fault(void)
{
    struct __attribute__((packed)) {
        u16 limit;
        u64 base;
    } idtr = { 0, 0 };
    puts_("TRIPLE-FAULT-NOW\n");
    __asm__ volatile("lidt %0; ud2" ::"m"(idtr));
    fail("survived-triple-fault");
}

/* Prints `TICK <n>` about every 20 ms, forever: the API tests watch the
 * console grow, stop while the VM is paused and start over after a reboot. */
static void test_ticker(void)
{
    for (u64 n = 0;; n++) {
        puts_("TICK ");
        put_dec(n);
        puts_("\n");
        delay_ms(20);
    }
}

void guest_main(const u8 *boot_params)
{
    static char name[64];
    const char *cmdline = (const char *)(u64) * (const u32 *)(boot_params + BP_CMD_LINE_PTR);

    puts_("TESTGUEST-START\n");
    g_cmdline = cmdline;
    find_value(cmdline, "test", name, sizeof(name));
    g_name = name;

    if (streq(name, "serial"))
        test_serial();
    else if (streq(name, "echo"))
        test_echo();
    else if (streq(name, "cmos"))
        test_cmos();
    else if (streq(name, "poweroff"))
        test_poweroff();
    else if (streq(name, "reset-i8042"))
        test_reset_i8042();
    else if (streq(name, "reset-acpi"))
        test_reset_acpi();
    else if (streq(name, "hlt"))
        test_hlt();
    else if (streq(name, "hostile-io"))
        test_hostile_io();
    else if (streq(name, "memsize"))
        test_memsize(boot_params);
    else if (streq(name, "cpuid"))
        test_cpuid();
    else if (streq(name, "triple-fault"))
        test_triple_fault();
    else if (streq(name, "ticker"))
        test_ticker();
    else if (streq(name, "pci-enum"))
        test_pci_enum();
    else if (streq(name, "firmware-id"))
        test_firmware_id();
    else if (streq(name, "virtio-blk-rw"))
        test_virtio_blk_rw();
    else if (streq(name, "virtio-blk-ro"))
        test_virtio_blk_ro();
    else if (streq(name, "virtio-rng"))
        test_virtio_rng();
    else if (streq(name, "virtio-console"))
        test_virtio_console();
    else if (streq(name, "virtio-msix"))
        test_virtio_msix();
    else if (streq(name, "virtio-hostile"))
        test_virtio_hostile();
    else
        fail("unknown-test");
    puts_("TESTGUEST-END\n");
    halt_forever();
}
