/*
 * A tiny polling driver for modern virtio-pci devices (virtio 1.2 §4.1):
 * finds a device, walks its capabilities, negotiates features, sets up
 * split virtqueues in guest RAM and polls the used ring with timeouts.
 */
#include "guest.h"

int vdev_find(struct vdev *d, u16 device_id, int nth)
{
    memset_(d, 0, sizeof(*d));
    for (u8 slot = 0; slot < PCI_SLOTS; slot++) {
        u32 id = pci_read32(slot, 0);
        if ((id & 0xffff) != VIRTIO_VENDOR || (id >> 16) != device_id)
            continue;
        if (nth-- > 0)
            continue;
        d->slot = slot;
        d->device_id = device_id;
        u32 lo = pci_read32(slot, 0x10);
        if ((lo & 0x7) != 0x4)
            return -2; /* want a 64-bit memory BAR */
        d->bar0 = ((u64)pci_read32(slot, 0x14) << 32) | (lo & ~0xful);
        if (map_mmio(d->bar0 & ~((1ul << 30) - 1)) != 0)
            return -3;
        /* Memory decoding and bus mastering (DMA and MSI). */
        pci_write16(slot, 0x04, pci_read16(slot, 0x04) | 0x6);
        u8 p = pci_read8(slot, 0x34) & 0xfc;
        for (int n = 0; p && n < 48; n++, p = pci_read8(slot, p + 1) & 0xfc) {
            u8 cap = pci_read8(slot, p);
            if (cap == 0x11) {
                d->msix_cap = p;
                d->msix_size = (pci_read16(slot, p + 2) & 0x7ff) + 1;
                d->msix_table = pci_read32(slot, p + 4);
                d->msix_pba = pci_read32(slot, p + 8);
                continue;
            }
            if (cap != 0x09)
                continue;
            u8 type = pci_read8(slot, p + 3);
            u8 bar = pci_read8(slot, p + 4);
            u64 addr = d->bar0 + pci_read32(slot, p + 8);
            if (bar != 0)
                continue;
            if (type == 1)
                d->common = addr;
            else if (type == 2) {
                d->notify = addr;
                d->notify_mult = pci_read32(slot, p + 16);
            } else if (type == 3)
                d->isr = addr;
            else if (type == 4)
                d->devcfg = addr;
        }
        if (!d->common || !d->notify || !d->isr)
            return -4;
        return 0;
    }
    return -1;
}

u8 vdev_status(struct vdev *d) { return mmio_r8(d->common + CC_STATUS); }

void vdev_reset(struct vdev *d)
{
    mmio_w8(d->common + CC_STATUS, 0);
    for (int i = 0; i < 100000 && vdev_status(d) != 0; i++)
        ;
}

int vdev_init(struct vdev *d, u64 want)
{
    vdev_reset(d);
    if (vdev_status(d) != 0)
        return -1;
    mmio_w8(d->common + CC_STATUS, VS_ACK);
    mmio_w8(d->common + CC_STATUS, VS_ACK | VS_DRIVER);
    mmio_w32(d->common + CC_DFSELECT, 0);
    u64 lo = mmio_r32(d->common + CC_DF);
    mmio_w32(d->common + CC_DFSELECT, 1);
    u64 hi = mmio_r32(d->common + CC_DF);
    d->offered = (hi << 32) | lo;
    u64 accept = d->offered & (want | VF_VERSION_1);
    mmio_w32(d->common + CC_GFSELECT, 0);
    mmio_w32(d->common + CC_GF, (u32)accept);
    mmio_w32(d->common + CC_GFSELECT, 1);
    mmio_w32(d->common + CC_GF, (u32)(accept >> 32));
    mmio_w8(d->common + CC_STATUS, VS_ACK | VS_DRIVER | VS_FEATURES_OK);
    if (!(vdev_status(d) & VS_FEATURES_OK))
        return -2;
    return 0;
}

int vq_setup(struct vdev *d, struct vq *q, u16 index, struct vring *ring, u16 vector)
{
    memset_(ring, 0, sizeof(*ring));
    mmio_w16(d->common + CC_QSELECT, index);
    u16 max = mmio_r16(d->common + CC_QSIZE);
    if (max == 0)
        return -1;
    u16 size = max < VQ_SIZE ? max : VQ_SIZE;
    mmio_w16(d->common + CC_QSIZE, size);
    if (mmio_r16(d->common + CC_QSIZE) != size)
        return -2;
    u64 desc = (u64)ring->desc, avail = (u64)&ring->avail_flags, used = (u64)&ring->used_flags;
    mmio_w32(d->common + CC_QDESC, (u32)desc);
    mmio_w32(d->common + CC_QDESC + 4, (u32)(desc >> 32));
    mmio_w32(d->common + CC_QDRIVER, (u32)avail);
    mmio_w32(d->common + CC_QDRIVER + 4, (u32)(avail >> 32));
    mmio_w32(d->common + CC_QDEVICE, (u32)used);
    mmio_w32(d->common + CC_QDEVICE + 4, (u32)(used >> 32));
    mmio_w16(d->common + CC_QMSIX, vector);
    if (mmio_r16(d->common + CC_QMSIX) != vector)
        return -3;
    u16 noff = mmio_r16(d->common + CC_QNOTIFYOFF);
    mmio_w16(d->common + CC_QENABLE, 1);
    if (mmio_r16(d->common + CC_QENABLE) != 1)
        return -4;
    q->ring = ring;
    q->index = index;
    q->size = size;
    q->next_avail = 0;
    q->last_used = 0;
    q->notify_addr = d->notify + (u64)noff * d->notify_mult;
    return 0;
}

int vdev_driver_ok(struct vdev *d)
{
    mmio_w8(d->common + CC_STATUS, VS_ACK | VS_DRIVER | VS_FEATURES_OK | VS_DRIVER_OK);
    u8 s = vdev_status(d);
    return (s & VS_DRIVER_OK) && !(s & VS_NEEDS_RESET) ? 0 : -1;
}

void vq_kick(struct vq *q)
{
    mfence();
    mmio_w16(q->notify_addr, q->index);
}

void vq_push_raw(struct vq *q, u16 head, u16 step)
{
    q->ring->avail_ring[q->next_avail % q->size] = head;
    barrier();
    q->next_avail += step;
    *(volatile u16 *)&q->ring->avail_idx = q->next_avail;
    vq_kick(q);
}

void vq_push(struct vq *q, u16 head) { vq_push_raw(q, head, 1); }

int vq_poll(struct vdev *d, struct vq *q, u32 *id, u32 *len, u32 timeout_ms)
{
    u64 end = rdtsc() + (u64)timeout_ms * tsc_per_ms();
    for (u32 spins = 0;; spins++) {
        if (*(volatile u16 *)&q->ring->used_idx != q->last_used) {
            barrier();
            u16 slot = q->last_used % q->size;
            *id = *(volatile u32 *)&q->ring->used_ring[slot].id;
            *len = *(volatile u32 *)&q->ring->used_ring[slot].len;
            q->last_used++;
            return 0;
        }
        /* Checking the status costs an exit: do it now and then. */
        if ((spins & 0xff) == 0xff && (vdev_status(d) & VS_NEEDS_RESET))
            return -2;
        if (rdtsc() > end)
            return (vdev_status(d) & VS_NEEDS_RESET) ? -2 : -1;
        __asm__ volatile("pause");
    }
}

static struct {
    u32 type;
    u32 reserved;
    u64 sector;
} blk_hdr __attribute__((aligned(16)));
static volatile u8 blk_status;

int blk_request(struct vdev *d, struct vq *q, u32 type, u64 sector, void *data, u32 len, u8 *status,
                u32 *used_len)
{
    struct vdesc *t = q->ring->desc;
    blk_hdr.type = type;
    blk_hdr.reserved = 0;
    blk_hdr.sector = sector;
    blk_status = 0xee;
    int n = 0;
    t[n] = (struct vdesc){ (u64)&blk_hdr, sizeof(blk_hdr), VD_NEXT, (u16)(n + 1) };
    n++;
    if (data) {
        u16 dir = (type == BLK_T_OUT) ? 0 : VD_WRITE;
        t[n] = (struct vdesc){ (u64)data, len, (u16)(VD_NEXT | dir), (u16)(n + 1) };
        n++;
    }
    t[n] = (struct vdesc){ (u64)&blk_status, 1, VD_WRITE, 0 };
    vq_push(q, 0);
    u32 id = 0, ulen = 0;
    int r = vq_poll(d, q, &id, &ulen, 1000);
    *status = blk_status;
    if (used_len)
        *used_len = ulen;
    if (r == 0 && id != 0)
        return -3;
    return r;
}

void describe_result(int r, u32 len, u8 status, struct vdev *d)
{
    puts_(r == 0 ? "used" : r == -2 ? "needs-reset" : r == -1 ? "timeout" : "bad-id");
    puts_(" len=");
    put_dec(len);
    puts_(" status=");
    put_hex8(status);
    puts_(" devstatus=");
    put_hex8(vdev_status(d));
}
