/*
 * The `virtio-hostile` scenario: a driver that breaks the rules on a
 * virtio-blk device. Each case prints what the device did
 *
 *   HOSTILE <case> used|timeout|needs-reset len=N status=SS devstatus=DD
 *   HOSTILE <case> <field>=<value> ...          (transport cases)
 *   HOSTILE-RECOVERED <case> yes|no
 *
 * then resets the device and checks a normal GET_ID request still works.
 * `case=<name>` on the command line runs one case; otherwise every case
 * marked default runs. The last line is VIRTIO-HOSTILE-STILL-WORKS.
 */
#include "guest.h"

#define OUTSIDE_RAM 0xfff00000000ul
#define CHAIN_TIMEOUT_MS 300

static struct vring hring;
static struct vdev dev;
static struct vq vq;
static struct {
    u32 type;
    u32 reserved;
    u64 sector;
} hdr __attribute__((aligned(16)));
static u8 data[4096] __attribute__((aligned(4096)));
static volatile u8 status_byte;
static char serial[32];

static void line(const char *name) { puts_("HOSTILE "); puts_(name); puts_(" "); }

static void kv(const char *k, u64 v)
{
    puts_(k);
    puts_("=");
    put_hex32((u32)v);
    puts_(" ");
}

static int bring_up(void)
{
    if (vdev_init(&dev, 0) || vq_setup(&dev, &vq, 0, &hring, NO_VECTOR))
        return -1;
    return vdev_driver_ok(&dev);
}

/* Resets, brings the device up again and checks GET_ID returns the serial. */
static int still_works(const char *name)
{
    u8 st = 0;
    u32 len = 0;
    int ok = bring_up() == 0;
    if (ok) {
        memset_(data, 0, 32);
        int r = blk_request(&dev, &vq, BLK_T_GET_ID, 0, data, 20, &st, &len);
        ok = r == 0 && st == 0;
        for (int i = 0; ok && i < 20; i++) {
            ok = data[i] == (u8)serial[i];
            if (!serial[i])
                break;
        }
    }
    vdev_reset(&dev);
    puts_("HOSTILE-RECOVERED ");
    puts_(name);
    puts_(ok ? " yes\n" : " no\n");
    return ok;
}

/* ---- descriptor-chain cases: each fills the table and posts a head ---- */

static void d(int i, u64 addr, u32 len, u16 flags, u16 next)
{
    vq.ring->desc[i] = (struct vdesc){ addr, len, flags, next };
}

static void in_request(void)
{
    hdr.type = BLK_T_IN;
    hdr.reserved = 0;
    hdr.sector = 0;
}

static void c_oob_header(void)
{
    d(0, OUTSIDE_RAM, 16, VD_NEXT, 1);
    d(1, (u64)data, 512, VD_NEXT | VD_WRITE, 2);
    d(2, (u64)&status_byte, 1, VD_WRITE, 0);
    vq_push(&vq, 0);
}

static void c_oob_data(void)
{
    d(0, (u64)&hdr, 16, VD_NEXT, 1);
    d(1, OUTSIDE_RAM, 512, VD_NEXT | VD_WRITE, 2);
    d(2, (u64)&status_byte, 1, VD_WRITE, 0);
    vq_push(&vq, 0);
}

static void c_huge_len(void)
{
    d(0, (u64)&hdr, 16, VD_NEXT, 1);
    d(1, (u64)data, 0xffffffffu, VD_NEXT | VD_WRITE, 2);
    d(2, (u64)&status_byte, 1, VD_WRITE, 0);
    vq_push(&vq, 0);
}

static void c_loop(void)
{
    d(0, (u64)&hdr, 16, VD_NEXT, 1);
    d(1, (u64)data, 512, VD_NEXT | VD_WRITE, 2);
    d(2, (u64)&status_byte, 1, VD_NEXT | VD_WRITE, 1);
    vq_push(&vq, 0);
}

static void c_self_loop(void)
{
    d(0, (u64)&status_byte, 1, VD_NEXT | VD_WRITE, 0);
    vq_push(&vq, 0);
}

static void c_header_writable(void)
{
    d(0, (u64)&hdr, 16, VD_NEXT | VD_WRITE, 1);
    d(1, (u64)data, 512, VD_NEXT | VD_WRITE, 2);
    d(2, (u64)&status_byte, 1, VD_WRITE, 0);
    vq_push(&vq, 0);
}

static void c_status_readonly(void)
{
    d(0, (u64)&hdr, 16, VD_NEXT, 1);
    d(1, (u64)&status_byte, 1, 0, 0);
    hdr.type = BLK_T_FLUSH;
    vq_push(&vq, 0);
}

static void c_no_status(void)
{
    d(0, (u64)&hdr, 16, 0, 0);
    vq_push(&vq, 0);
}

static void c_short_header(void)
{
    d(0, (u64)&hdr, 8, VD_NEXT, 1);
    d(1, (u64)&status_byte, 1, VD_WRITE, 0);
    vq_push(&vq, 0);
}

static void c_next_oob(void)
{
    d(0, (u64)&hdr, 16, VD_NEXT, 500);
    vq_push(&vq, 0);
}

static void c_indirect_oob(void)
{
    d(0, OUTSIDE_RAM, 16 * 4, VD_INDIRECT, 0);
    vq_push(&vq, 0);
}

static void c_head_oob(void)
{
    d(0, (u64)&hdr, 16, VD_NEXT, 1);
    d(1, (u64)&status_byte, 1, VD_WRITE, 0);
    vq_push(&vq, 200);
}

static void c_avail_jump(void)
{
    d(0, (u64)&hdr, 16, VD_NEXT, 1);
    d(1, (u64)&status_byte, 1, VD_WRITE, 0);
    vq_push_raw(&vq, 0, 1000);
}

static void run_chain_case(const char *name, void (*build)(void))
{
    u32 id = 0xffff, len = 0;
    int r = -5;
    in_request();
    status_byte = 0xee;
    if (bring_up() == 0) {
        build();
        r = vq_poll(&dev, &vq, &id, &len, CHAIN_TIMEOUT_MS);
    }
    line(name);
    if (r == -5)
        puts_("bring-up-failed");
    else
        describe_result(r, len, status_byte, &dev);
    puts_("\n");
}

/* ---- transport cases ---- */

static u64 cc(u32 off) { return dev.common + off; }

/* Queue sizes that are not powers of two (or 0, or huge) are refused. */
static void t_qsize_npot(const char *name)
{
    vdev_init(&dev, 0);
    mmio_w16(cc(CC_QSELECT), 0);
    u16 before = mmio_r16(cc(CC_QSIZE));
    line(name);
    kv("before", before);
    static const u16 sizes[] = { 12, 0, 3, 0xffff, 0x8000 };
    for (u32 i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        mmio_w16(cc(CC_QSIZE), sizes[i]);
        puts_("w");
        put_hex16(sizes[i]);
        kv("", mmio_r16(cc(CC_QSIZE)));
        mmio_w16(cc(CC_QSIZE), before);
    }
    puts_("\n");
}

/* queue_select beyond num_queues: reads show no queue, writes do nothing. */
static void t_qsel_oob(const char *name)
{
    vdev_init(&dev, 0);
    mmio_w16(cc(CC_QSELECT), 0);
    u16 size0 = mmio_r16(cc(CC_QSIZE));
    u32 desc0 = mmio_r32(cc(CC_QDESC));
    line(name);
    static const u16 sels[] = { 1, 7, 0x100, 0xffff };
    for (u32 i = 0; i < sizeof(sels) / sizeof(sels[0]); i++) {
        mmio_w16(cc(CC_QSELECT), sels[i]);
        mmio_w16(cc(CC_QSIZE), 4);
        mmio_w32(cc(CC_QDESC), 0x1000);
        mmio_w32(cc(CC_QDESC + 4), 0xffffffff);
        mmio_w16(cc(CC_QMSIX), 0);
        mmio_w16(cc(CC_QENABLE), 1);
        puts_("sel");
        put_hex16(sels[i]);
        kv(":size", mmio_r16(cc(CC_QSIZE)));
        kv("vec", mmio_r16(cc(CC_QMSIX)));
        kv("en", mmio_r16(cc(CC_QENABLE)));
        kv("desc", mmio_r32(cc(CC_QDESC)));
    }
    mmio_w16(cc(CC_QSELECT), 0);
    int same = mmio_r16(cc(CC_QSIZE)) == size0 && mmio_r32(cc(CC_QDESC)) == desc0 &&
               mmio_r16(cc(CC_QENABLE)) == 0;
    puts_(same ? "queue0=unchanged\n" : "queue0=CHANGED\n");
    /* Enabling the bogus queues must not make DRIVER_OK fail or succeed wrongly. */
    vq_setup(&dev, &vq, 0, &hring, NO_VECTOR);
    line(name);
    kv("driver-ok", vdev_driver_ok(&dev) == 0);
    puts_("\n");
}

/* Notifications for queues that do not exist, and odd notify writes. */
static void t_notify_bogus(const char *name)
{
    u8 st = 0;
    u32 len = 0;
    bring_up();
    mmio_w16(dev.notify + 5ul * dev.notify_mult, 5);
    mmio_w16(dev.notify + 0xffc, 0xffff);
    mmio_w32(dev.notify + 0x7f0, 0xffffffff);
    mmio_w8(dev.notify + 1, 0xff);
    mmio_w16(vq.notify_addr, 0xffff);
    int r = blk_request(&dev, &vq, BLK_T_GET_ID, 0, data, 20, &st, &len);
    line(name);
    describe_result(r, len, st, &dev);
    puts_("\n");
}

/* Read-only fields ignore writes. */
static void t_ro_fields(const char *name)
{
    bring_up();
    mmio_w32(cc(CC_DFSELECT), 0);
    u32 df = mmio_r32(cc(CC_DF));
    u16 nq = mmio_r16(cc(CC_NUMQ));
    u8 gen = mmio_r8(cc(CC_CFGGEN));
    u16 noff = mmio_r16(cc(CC_QNOTIFYOFF));
    u32 cap = mmio_r32(dev.devcfg);
    mmio_w32(cc(CC_DF), ~df);
    mmio_w16(cc(CC_NUMQ), 0x1234);
    mmio_w8(cc(CC_CFGGEN), 0x77);
    mmio_w16(cc(CC_QNOTIFYOFF), 0x55);
    mmio_w32(dev.devcfg, 0xdeadbeef);
    mmio_w8(dev.isr, 0xff);
    /* Writes to queue fields after DRIVER_OK are ignored too. */
    u32 desc = mmio_r32(cc(CC_QDESC));
    mmio_w32(cc(CC_QDESC), 0x2000);
    mmio_w16(cc(CC_QSIZE), 2);
    int same = mmio_r32(cc(CC_DF)) == df && mmio_r16(cc(CC_NUMQ)) == nq && mmio_r8(cc(CC_CFGGEN)) == gen &&
               mmio_r16(cc(CC_QNOTIFYOFF)) == noff && mmio_r32(dev.devcfg) == cap &&
               mmio_r32(cc(CC_QDESC)) == desc && mmio_r16(cc(CC_QSIZE)) == vq.size;
    line(name);
    kv("numq", mmio_r16(cc(CC_NUMQ)));
    kv("capacity", mmio_r32(dev.devcfg));
    puts_(same ? "unchanged\n" : "CHANGED\n");
}

/* Garbage status values and DRIVER_OK without a working setup. */
static void t_status_garbage(const char *name)
{
    static const u8 values[] = { 0x5a, 0xff, 0x40, 0x80, 0x04 };
    line(name);
    for (u32 i = 0; i < sizeof(values) / sizeof(values[0]); i++) {
        vdev_reset(&dev);
        mmio_w8(cc(CC_STATUS), values[i]);
        puts_("w");
        put_hex8(values[i]);
        kv("", vdev_status(&dev));
    }
    /* FEATURES_OK without VERSION_1 must not stick. */
    vdev_reset(&dev);
    mmio_w8(cc(CC_STATUS), VS_ACK | VS_DRIVER);
    mmio_w8(cc(CC_STATUS), VS_ACK | VS_DRIVER | VS_FEATURES_OK);
    kv("no-version1", vdev_status(&dev));
    /* DRIVER_OK with no queue enabled. */
    vdev_init(&dev, 0);
    mmio_w8(cc(CC_STATUS), VS_ACK | VS_DRIVER | VS_FEATURES_OK | VS_DRIVER_OK);
    kv("no-queue", vdev_status(&dev));
    /* Clearing bits without a reset. */
    mmio_w8(cc(CC_STATUS), VS_ACK);
    kv("clear", vdev_status(&dev));
    puts_("\n");
}

/* Rings outside guest RAM: DRIVER_OK must fail cleanly. */
static void t_bad_rings(const char *name)
{
    vdev_init(&dev, 0);
    vq_setup(&dev, &vq, 0, &hring, NO_VECTOR);
    mmio_w32(cc(CC_QDESC), 0);
    mmio_w32(cc(CC_QDESC + 4), 0xfff);
    mmio_w32(cc(CC_QDEVICE), 0xfffff000);
    mmio_w32(cc(CC_QDEVICE + 4), 0);
    mmio_w8(cc(CC_STATUS), VS_ACK | VS_DRIVER | VS_FEATURES_OK | VS_DRIVER_OK);
    line(name);
    kv("devstatus", vdev_status(&dev));
    puts_("\n");
}

/* A misaligned descriptor table address is refused (or DRIVER_OK fails). */
static void t_misaligned_ring(const char *name)
{
    vdev_init(&dev, 0);
    vq_setup(&dev, &vq, 0, &hring, NO_VECTOR);
    mmio_w32(cc(CC_QDESC), (u32)(u64)hring.desc + 3);
    u32 back = mmio_r32(cc(CC_QDESC));
    mmio_w8(cc(CC_STATUS), VS_ACK | VS_DRIVER | VS_FEATURES_OK | VS_DRIVER_OK);
    line(name);
    kv("desc-kept", back == (u32)(u64)hring.desc);
    kv("devstatus", vdev_status(&dev));
    puts_("\n");
}

struct hcase {
    const char *name;
    void (*chain)(void);
    void (*transport)(const char *);
    int by_default;
};

static const struct hcase cases[] = {
    { "oob-header", c_oob_header, 0, 1 },
    { "oob-data", c_oob_data, 0, 1 },
    { "huge-len", c_huge_len, 0, 1 },
    { "loop", c_loop, 0, 1 },
    { "self-loop", c_self_loop, 0, 1 },
    { "header-writable", c_header_writable, 0, 1 },
    { "status-readonly", c_status_readonly, 0, 1 },
    { "no-status", c_no_status, 0, 1 },
    { "short-header", c_short_header, 0, 1 },
    { "next-oob", c_next_oob, 0, 1 },
    { "indirect-oob", c_indirect_oob, 0, 1 },
    { "head-oob", c_head_oob, 0, 1 },
    { "qsize-npot", 0, t_qsize_npot, 1 },
    { "qsel-oob", 0, t_qsel_oob, 1 },
    { "notify-bogus", 0, t_notify_bogus, 1 },
    { "ro-fields", 0, t_ro_fields, 1 },
    { "status-garbage", 0, t_status_garbage, 1 },
    { "bad-rings", 0, t_bad_rings, 1 },
    { "misaligned-ring", 0, t_misaligned_ring, 1 },
    /* Last and opt-in: a device that cannot recover from it hangs the VM. */
    { "avail-jump", c_avail_jump, 0, 0 },
};

void test_virtio_hostile(void)
{
    char only[32];
    int all_ok = 1, ran = 0;
    cmdline_value("case", only, sizeof(only));
    cmdline_value("serial", serial, sizeof(serial));
    if (vdev_find(&dev, VIRTIO_DEV_BLK, 0)) {
        fail("no-blk");
        acpi_poweroff();
        return;
    }
    for (u32 i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const struct hcase *c = &cases[i];
        if (only[0] ? !streq(only, c->name) : !c->by_default)
            continue;
        ran++;
        if (c->chain)
            run_chain_case(c->name, c->chain);
        else
            c->transport(c->name);
        vdev_reset(&dev);
        all_ok &= still_works(c->name);
    }
    if (still_works("final"))
        puts_("VIRTIO-HOSTILE-STILL-WORKS\n");
    else
        all_ok = 0;
    if (!ran)
        fail("no-such-case");
    else if (all_ok)
        pass();
    else
        fail("device-did-not-recover");
    acpi_poweroff();
}
