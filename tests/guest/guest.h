/*
 * Shared declarations of the chv test guest: fixed-width types, port and
 * MMIO accessors, the COM1 console helpers (testguest.c), PCI access
 * (pci.c), the polling virtio-pci driver (virtio.c) and the virtio
 * scenarios (virtio_tests.c, virtio_hostile.c).
 */
#ifndef CHV_TESTGUEST_H
#define CHV_TESTGUEST_H

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long u64;

static inline void outb(u16 port, u8 v) { __asm__ volatile("outb %0, %1" ::"a"(v), "Nd"(port)); }
static inline void outw(u16 port, u16 v) { __asm__ volatile("outw %0, %1" ::"a"(v), "Nd"(port)); }
static inline void outl(u16 port, u32 v) { __asm__ volatile("outl %0, %1" ::"a"(v), "Nd"(port)); }
static inline u8 inb(u16 port) { u8 v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline u16 inw(u16 port) { u16 v; __asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline u32 inl(u16 port) { u32 v; __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port)); return v; }

static inline u8 mmio_r8(u64 a) { return *(volatile u8 *)a; }
static inline u16 mmio_r16(u64 a) { return *(volatile u16 *)a; }
static inline u32 mmio_r32(u64 a) { return *(volatile u32 *)a; }
static inline void mmio_w8(u64 a, u8 v) { *(volatile u8 *)a = v; }
static inline void mmio_w16(u64 a, u16 v) { *(volatile u16 *)a = v; }
static inline void mmio_w32(u64 a, u32 v) { *(volatile u32 *)a = v; }

static inline void barrier(void) { __asm__ volatile("" ::: "memory"); }
static inline void mfence(void) { __asm__ volatile("mfence" ::: "memory"); }

static inline u64 rdtsc(void)
{
    u32 lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return ((u64)hi << 32) | lo;
}

/* ---- testguest.c: console and verdicts ---- */
void putc_com1(char c);
void puts_(const char *s);
void put_dec(u64 v);
void put_hex8(u8 v);
void put_hex16(u16 v);
void put_hex32(u32 v);
void put_hex64(u64 v);
void pass(void);
void fail(const char *why);
void acpi_poweroff(void);
int streq(const char *a, const char *b);
void *memset_(void *d, int c, u64 n);
/* Value of `key=` on the command line copied into out ("" when absent). */
void cmdline_value(const char *key, char *out, int cap);
/* Busy-waits about `ms` milliseconds (TSC based). */
void delay_ms(u32 ms);
/* TSC ticks per millisecond (estimated from CPUID, else 3 GHz). */
u64 tsc_per_ms(void);

/* ---- pci.c ---- */
#define PCI_SLOTS 32
#define ECAM_BASE 0xe0000000ul
u32 pci_cf8_read32(u8 slot, u16 off);
void pci_cf8_write32(u8 slot, u16 off, u32 v);
u32 pci_ecam_read32(u8 slot, u16 off);
u8 pci_read8(u8 slot, u16 off);
u16 pci_read16(u8 slot, u16 off);
u32 pci_read32(u8 slot, u16 off);
void pci_write16(u8 slot, u16 off, u16 v);
void pci_write32(u8 slot, u16 off, u32 v);
/* Makes [addr, addr + 1 GiB) (1 GiB aligned, below 512 GiB) accessible. */
int map_mmio(u64 addr);
void test_pci_enum(void);
void test_firmware_id(void);

/* ---- virtio.c: a polling modern virtio-pci driver ---- */
#define VIRTIO_VENDOR 0x1af4
#define VIRTIO_DEV_BLK 0x1042
#define VIRTIO_DEV_CONSOLE 0x1043
#define VIRTIO_DEV_RNG 0x1044

#define VS_ACK 1
#define VS_DRIVER 2
#define VS_DRIVER_OK 4
#define VS_FEATURES_OK 8
#define VS_NEEDS_RESET 0x40
#define VS_FAILED 0x80

/* Common configuration offsets. */
#define CC_DFSELECT 0x00
#define CC_DF 0x04
#define CC_GFSELECT 0x08
#define CC_GF 0x0c
#define CC_MSIX 0x10
#define CC_NUMQ 0x12
#define CC_STATUS 0x14
#define CC_CFGGEN 0x15
#define CC_QSELECT 0x16
#define CC_QSIZE 0x18
#define CC_QMSIX 0x1a
#define CC_QENABLE 0x1c
#define CC_QNOTIFYOFF 0x1e
#define CC_QDESC 0x20
#define CC_QDRIVER 0x28
#define CC_QDEVICE 0x30

#define VF_VERSION_1 (1ul << 32)
#define NO_VECTOR 0xffff

#define VQ_SIZE 16
#define VD_NEXT 1
#define VD_WRITE 2
#define VD_INDIRECT 4

struct vdesc {
    u64 addr;
    u32 len;
    u16 flags;
    u16 next;
};

struct vring {
    struct vdesc desc[VQ_SIZE];
    u16 avail_flags;
    u16 avail_idx;
    u16 avail_ring[VQ_SIZE];
    u16 used_event;
    u8 pad[4096 - 16 * VQ_SIZE - 6 - 2 * VQ_SIZE];
    u16 used_flags;
    u16 used_idx;
    struct {
        u32 id;
        u32 len;
    } used_ring[VQ_SIZE];
    u16 avail_event;
} __attribute__((aligned(4096)));

struct vq {
    struct vring *ring;
    u16 index;
    u16 size;
    u16 next_avail;
    u16 last_used;
    u64 notify_addr;
};

struct vdev {
    u8 slot;
    u16 device_id;
    u64 bar0;
    u64 common, isr, devcfg, notify;
    u32 notify_mult;
    u8 msix_cap;
    u32 msix_table; /* BAR0 offset */
    u32 msix_pba;   /* BAR0 offset */
    u16 msix_size;
    u64 offered;
};

int vdev_find(struct vdev *d, u16 device_id, int nth);
void vdev_reset(struct vdev *d);
u8 vdev_status(struct vdev *d);
/* Reset, ACK, DRIVER, negotiate want & offered (+VERSION_1), FEATURES_OK. */
int vdev_init(struct vdev *d, u64 want);
int vq_setup(struct vdev *d, struct vq *q, u16 index, struct vring *ring, u16 vector);
int vdev_driver_ok(struct vdev *d);
/* Makes `head` available and notifies (bumps avail idx by `step`). */
void vq_push(struct vq *q, u16 head);
void vq_push_raw(struct vq *q, u16 head, u16 step);
void vq_kick(struct vq *q);
/* 0: a used entry arrived; -1 timeout; -2 device set NEEDS_RESET. */
int vq_poll(struct vdev *d, struct vq *q, u32 *id, u32 *len, u32 timeout_ms);
/* One virtio-blk request: type, sector, data (NULL for none), status out. */
int blk_request(struct vdev *d, struct vq *q, u32 type, u64 sector, void *data, u32 len, u8 *status,
                u32 *used_len);
void describe_result(int r, u32 len, u8 status, struct vdev *d);

#define BLK_T_IN 0
#define BLK_T_OUT 1
#define BLK_T_FLUSH 4
#define BLK_T_GET_ID 8
#define BLK_F_RO (1ul << 5)
#define BLK_F_FLUSH (1ul << 9)

/* ---- interrupts (start.S + virtio_tests.c) ---- */
extern volatile u32 msix_count;
void idt_setup(void);

/* ---- scenarios ---- */
void test_virtio_blk_rw(void);
void test_virtio_blk_ro(void);
void test_virtio_rng(void);
void test_virtio_console(void);
void test_virtio_msix(void);
void test_virtio_hostile(void);

#endif
