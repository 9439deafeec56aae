/*
 * Virtio scenarios of the test guest: virtio-blk read/write and read-only,
 * virtio-rng, virtio-console output, and MSI-X interrupt delivery through
 * the guest's LAPIC (with the ISR status register checked on the way).
 */
#include "guest.h"

#define LAPIC 0xfee00000ul
#define LAPIC_ID 0x20
#define LAPIC_TPR 0x80
#define LAPIC_SVR 0xf0
#define MSIX_VECTOR 0x40

static struct vring ring0;
static u8 buf_a[4096] __attribute__((aligned(4096)));
static u8 buf_b[4096] __attribute__((aligned(4096)));

/* The byte the host writes at image offset `o` (tests/tests/testguest_virtio.rs). */
static u8 host_pattern(u64 o) { return (u8)(o % 251); }
/* The byte the guest writes at offset `i` of its test sector. */
static u8 guest_pattern(u32 i) { return (u8)(0xa5 ^ i ^ (i >> 8)); }

static void report(const char *what, int ok)
{
    puts_(what);
    puts_(ok ? " ok\n" : " BAD\n");
}

static void finish(int ok, const char *why)
{
    if (ok)
        pass();
    else
        fail(why);
    acpi_poweroff();
}

/* Finds the nth device, negotiates `want`, sets up queue `qi` on ring0. */
static int bring_up(struct vdev *d, struct vq *q, u16 dev, int nth, u64 want, u16 qi, u16 vector)
{
    int r = vdev_find(d, dev, nth);
    if (r) {
        puts_("VIRTIO-FIND error=");
        put_dec((u64)-r);
        puts_("\n");
        return -1;
    }
    if (vdev_init(d, want) || vq_setup(d, q, qi, &ring0, vector) || vdev_driver_ok(d)) {
        puts_("VIRTIO-INIT failed devstatus=");
        put_hex8(vdev_status(d));
        puts_("\n");
        return -1;
    }
    return 0;
}

static u64 blk_capacity(struct vdev *d)
{
    return ((u64)mmio_r32(d->devcfg + 4) << 32) | mmio_r32(d->devcfg);
}

void test_virtio_blk_rw(void)
{
    struct vdev d;
    struct vq q;
    u8 st;
    u32 len;
    int ok = 1;
    if (bring_up(&d, &q, VIRTIO_DEV_BLK, 0, BLK_F_FLUSH, 0, NO_VECTOR))
        return finish(0, "bring-up");
    u64 cap = blk_capacity(&d);
    puts_("BLK-CAPACITY ");
    put_dec(cap);
    puts_("\n");

    int r = blk_request(&d, &q, BLK_T_IN, 0, buf_a, 1024, &st, &len);
    int good = r == 0 && st == 0 && len == 1025;
    for (u32 i = 0; good && i < 1024; i++)
        good = buf_a[i] == host_pattern(i);
    report("BLK-HOSTPATTERN", good);
    ok &= good;

    for (u32 i = 0; i < 512; i++)
        buf_a[i] = guest_pattern(i);
    r = blk_request(&d, &q, BLK_T_OUT, 3, buf_a, 512, &st, &len);
    puts_("BLK-WRITE ");
    describe_result(r, len, st, &d);
    puts_("\n");
    ok &= r == 0 && st == 0;

    memset_(buf_b, 0, 512);
    r = blk_request(&d, &q, BLK_T_IN, 3, buf_b, 512, &st, &len);
    good = r == 0 && st == 0;
    for (u32 i = 0; good && i < 512; i++)
        good = buf_b[i] == guest_pattern(i);
    report("BLK-READBACK", good);
    ok &= good;

    memset_(buf_b, 0, 32);
    r = blk_request(&d, &q, BLK_T_GET_ID, 0, buf_b, 20, &st, &len);
    puts_("BLK-ID ");
    for (int i = 0; i < 20 && buf_b[i]; i++)
        putc_com1(buf_b[i] >= ' ' && buf_b[i] <= '~' ? (char)buf_b[i] : '?');
    puts_("\n");
    ok &= r == 0 && st == 0;

    r = blk_request(&d, &q, BLK_T_FLUSH, 0, 0, 0, &st, &len);
    puts_("BLK-FLUSH ");
    describe_result(r, len, st, &d);
    puts_("\n");
    ok &= r == 0 && st == 0;

    r = blk_request(&d, &q, BLK_T_IN, cap, buf_b, 512, &st, &len);
    puts_("BLK-BEYOND-END ");
    describe_result(r, len, st, &d);
    puts_("\n");
    ok &= r == 0 && st == 1;
    finish(ok, "blk-rw");
}

void test_virtio_blk_ro(void)
{
    struct vdev d;
    struct vq q;
    u8 st;
    u32 len;
    int ok = 1;
    if (bring_up(&d, &q, VIRTIO_DEV_BLK, 0, 0, 0, NO_VECTOR))
        return finish(0, "bring-up");
    puts_("BLK-RO-FEATURE ");
    put_dec((d.offered & BLK_F_RO) != 0);
    puts_("\n");
    ok &= (d.offered & BLK_F_RO) != 0;

    for (u32 i = 0; i < 512; i++)
        buf_a[i] = guest_pattern(i);
    int r = blk_request(&d, &q, BLK_T_OUT, 0, buf_a, 512, &st, &len);
    puts_("BLK-RO-WRITE ");
    describe_result(r, len, st, &d);
    puts_("\n");
    ok &= r == 0 && st == 1;

    r = blk_request(&d, &q, BLK_T_IN, 0, buf_b, 512, &st, &len);
    int good = r == 0 && st == 0;
    for (u32 i = 0; good && i < 512; i++)
        good = buf_b[i] == host_pattern(i);
    report("BLK-RO-READ", good);
    ok &= good;
    finish(ok, "blk-ro");
}

void test_virtio_rng(void)
{
    struct vdev d;
    struct vq q;
    int ok = 1;
    if (bring_up(&d, &q, VIRTIO_DEV_RNG, 0, 0, 0, NO_VECTOR))
        return finish(0, "bring-up");
    u8 *bufs[2] = { buf_a, buf_b };
    for (int n = 0; n < 2; n++) {
        memset_(bufs[n], 0, 64);
        q.ring->desc[n] = (struct vdesc){ (u64)bufs[n], 64, VD_WRITE, 0 };
        vq_push(&q, (u16)n);
        u32 id = 0, len = 0;
        int r = vq_poll(&d, &q, &id, &len, 1000);
        u32 distinct = 0;
        for (int i = 0; i < 64; i++) {
            int seen = 0;
            for (int j = 0; j < i; j++)
                seen |= bufs[n][j] == bufs[n][i];
            distinct += !seen;
        }
        puts_("RNG ");
        describe_result(r, len, 0, &d);
        puts_(" id=");
        put_dec(id);
        puts_(" distinct=");
        put_dec(distinct);
        puts_(" head=");
        for (int i = 0; i < 8; i++)
            put_hex8(bufs[n][i]);
        puts_("\n");
        ok &= r == 0 && id == (u32)n && len == 64 && distinct > 1;
    }
    int same = 1;
    for (int i = 0; i < 64; i++)
        same &= buf_a[i] == buf_b[i];
    ok &= !same;
    finish(ok, "rng");
}

void test_virtio_console(void)
{
    struct vdev d;
    struct vq q;
    static const char msg[] = "VIRTIO-CONSOLE-HELLO from the test guest\n";
    if (bring_up(&d, &q, VIRTIO_DEV_CONSOLE, 0, 0, 1, NO_VECTOR))
        return finish(0, "bring-up");
    q.ring->desc[0] = (struct vdesc){ (u64)msg, sizeof(msg) - 1, 0, 0 };
    vq_push(&q, 0);
    u32 id = 0, len = 0;
    int r = vq_poll(&d, &q, &id, &len, 1000);
    puts_("CONSOLE-TX ");
    describe_result(r, len, 0, &d);
    puts_("\n");
    finish(r == 0 && id == 0, "console-tx");
}

/* ---- interrupts -------------------------------------------------------- */

volatile u32 msix_count;

struct idt_gate {
    u16 off0;
    u16 sel;
    u8 ist;
    u8 type;
    u16 off1;
    u32 off2;
    u32 zero;
};

static struct idt_gate idt[256] __attribute__((aligned(16)));
extern const u64 exc_stub_table[32];
void msix_isr(void);
void spurious_isr(void);

static void set_gate(int v, u64 handler, u16 cs)
{
    idt[v] = (struct idt_gate){ (u16)handler, cs, 0, 0x8e, (u16)(handler >> 16), (u32)(handler >> 32), 0 };
}

void guest_exception(u64 vector, const u64 *frame)
{
    puts_("EXCEPTION vector=");
    put_dec(vector);
    puts_(" frame=");
    for (int i = 0; i < 3; i++) {
        put_hex64(frame[i]);
        puts_(" ");
    }
    puts_("\n");
    fail("exception");
    acpi_poweroff();
}

void idt_setup(void)
{
    u16 cs;
    __asm__ volatile("mov %%cs, %0" : "=r"(cs));
    for (int v = 0; v < 32; v++)
        set_gate(v, exc_stub_table[v], cs);
    set_gate(MSIX_VECTOR, (u64)msix_isr, cs);
    set_gate(0xff, (u64)spurious_isr, cs);
    struct __attribute__((packed)) {
        u16 limit;
        u64 base;
    } idtr = { sizeof(idt) - 1, (u64)idt };
    __asm__ volatile("lidt %0" ::"m"(idtr));
}

static void msix_entry(struct vdev *d, u16 entry, u32 addr, u32 data, u32 ctrl)
{
    u64 e = d->bar0 + d->msix_table + 16ul * entry;
    mmio_w32(e, addr);
    mmio_w32(e + 4, 0);
    mmio_w32(e + 8, data);
    mmio_w32(e + 12, ctrl);
}

static u32 pba0(struct vdev *d) { return mmio_r32(d->bar0 + d->msix_pba); }

/* Waits up to `ms` for the interrupt counter to exceed `base`. */
static u32 wait_irq(u32 base, u32 ms)
{
    u64 end = rdtsc() + (u64)ms * tsc_per_ms();
    while (msix_count <= base && rdtsc() < end)
        __asm__ volatile("pause");
    return msix_count - base;
}

void test_virtio_msix(void)
{
    struct vdev d;
    struct vq q;
    u8 st;
    u32 len;
    int ok = 1;

    idt_setup();
    mmio_w32(LAPIC + LAPIC_TPR, 0);
    mmio_w32(LAPIC + LAPIC_SVR, 0x100 | 0xff);
    u32 apic_id = mmio_r32(LAPIC + LAPIC_ID) >> 24;

    /* Phase 1: no vector, the driver polls; the ISR says "queue" once. */
    if (bring_up(&d, &q, VIRTIO_DEV_BLK, 0, 0, 0, NO_VECTOR))
        return finish(0, "bring-up");
    puts_("MSIX-CAP table-size=");
    put_dec(d.msix_size);
    puts_(" table=");
    put_hex32(d.msix_table);
    puts_(" pba=");
    put_hex32(d.msix_pba);
    puts_(" apic-id=");
    put_dec(apic_id);
    puts_("\n");
    (void)mmio_r8(d.isr);
    int r = blk_request(&d, &q, BLK_T_GET_ID, 0, buf_b, 20, &st, &len);
    u8 isr1 = mmio_r8(d.isr), isr2 = mmio_r8(d.isr);
    puts_("MSIX-ISR ");
    describe_result(r, len, st, &d);
    puts_(" first=");
    put_hex8(isr1);
    puts_(" second=");
    put_hex8(isr2);
    puts_("\n");
    ok &= r == 0 && (isr1 & 1) && isr2 == 0;

    /* Phase 2: MSI-X enabled, queue 0 on table entry 0 -> vector 0x40. */
    vdev_reset(&d);
    u16 ctrl = pci_read16(d.slot, d.msix_cap + 2);
    pci_write16(d.slot, d.msix_cap + 2, (ctrl | 0x8000) & ~0x4000);
    msix_entry(&d, 0, 0xfee00000u | (apic_id << 12), MSIX_VECTOR, 0);
    if (vdev_init(&d, 0))
        return finish(0, "msix-reinit");
    mmio_w16(d.common + CC_MSIX, 1);
    u16 cfgvec = mmio_r16(d.common + CC_MSIX);
    if (vq_setup(&d, &q, 0, &ring0, 0) || vdev_driver_ok(&d)) {
        puts_("MSIX-SETUP failed queue-vector=");
        put_hex16(mmio_r16(d.common + CC_QMSIX));
        puts_("\n");
        return finish(0, "msix-setup");
    }
    puts_("MSIX-VECTORS config=");
    put_hex16(cfgvec);
    puts_(" queue=");
    put_hex16(mmio_r16(d.common + CC_QMSIX));
    puts_("\n");
    ok &= cfgvec == 1;
    __asm__ volatile("sti");
    u32 base = msix_count;
    r = blk_request(&d, &q, BLK_T_GET_ID, 0, buf_b, 20, &st, &len);
    u32 got = wait_irq(base, 500);
    puts_("MSIX-IRQ ");
    describe_result(r, len, st, &d);
    puts_(" count=");
    put_dec(got);
    puts_("\n");
    ok &= r == 0 && got > 0;

    /* A masked entry holds the message pending until unmasked. */
    msix_entry(&d, 0, 0xfee00000u | (apic_id << 12), MSIX_VECTOR, 1);
    base = msix_count;
    r = blk_request(&d, &q, BLK_T_GET_ID, 0, buf_b, 20, &st, &len);
    u32 masked = wait_irq(base, 100);
    u32 pba_masked = pba0(&d);
    mmio_w32(d.bar0 + d.msix_table + 12, 0);
    u32 unmasked = wait_irq(base, 500);
    u32 pba_after = pba0(&d);
    puts_("MSIX-MASKED ");
    describe_result(r, len, st, &d);
    puts_(" while-masked=");
    put_dec(masked);
    puts_(" pba=");
    put_hex32(pba_masked);
    puts_(" after-unmask=");
    put_dec(unmasked);
    puts_(" pba=");
    put_hex32(pba_after);
    puts_("\n");
    ok &= r == 0 && masked == 0 && (pba_masked & 1) && unmasked == 1 && !(pba_after & 1);
    __asm__ volatile("cli");

    /* A vector beyond the table is refused (reads back NO_VECTOR). */
    vdev_reset(&d);
    vdev_init(&d, 0);
    mmio_w16(d.common + CC_QSELECT, 0);
    mmio_w16(d.common + CC_QMSIX, 50);
    u16 bad = mmio_r16(d.common + CC_QMSIX);
    puts_("MSIX-BAD-VECTOR readback=");
    put_hex16(bad);
    puts_("\n");
    ok &= bad == NO_VECTOR;
    vdev_reset(&d);
    finish(ok, "msix");
}
