/*
 * PCI configuration access for the test guest: mechanism #1 (ports
 * 0xCF8/0xCFC) and ECAM at 0xe0000000 (bus 0, function 0 only), mapping
 * of 64-bit BARs above the boot identity map, and the `pci-enum` scenario.
 */
#include "guest.h"

#define CF8 0xcf8
#define CFC 0xcfc

static u32 cf8_addr(u8 slot, u16 off) { return 0x80000000u | ((u32)slot << 11) | (off & 0xfc); }

u32 pci_cf8_read32(u8 slot, u16 off)
{
    outl(CF8, cf8_addr(slot, off));
    return inl(CFC);
}

void pci_cf8_write32(u8 slot, u16 off, u32 v)
{
    outl(CF8, cf8_addr(slot, off));
    outl(CFC, v);
}

static u64 ecam(u8 slot, u16 off) { return ECAM_BASE + ((u64)slot << 15) + off; }

u32 pci_ecam_read32(u8 slot, u16 off) { return mmio_r32(ecam(slot, off & 0xffc)); }

/* Everyday accesses go through ECAM; pci-enum cross-checks with CF8. */
u8 pci_read8(u8 slot, u16 off) { return mmio_r8(ecam(slot, off)); }
u16 pci_read16(u8 slot, u16 off) { return mmio_r16(ecam(slot, off)); }
u32 pci_read32(u8 slot, u16 off) { return mmio_r32(ecam(slot, off)); }
void pci_write16(u8 slot, u16 off, u16 v) { mmio_w16(ecam(slot, off), v); }
void pci_write32(u8 slot, u16 off, u32 v) { mmio_w32(ecam(slot, off), v); }

/* ---- page tables for MMIO above 4 GiB ---------------------------------- */

#define PTE_P 1ul
#define PTE_RW 2ul
#define PTE_PWT 8ul
#define PTE_PCD 0x10ul
#define PTE_PS 0x80ul
#define PTE_ADDR 0x000ffffffffff000ul

static u64 page_dirs[4][512] __attribute__((aligned(4096)));
static int page_dirs_used;

int map_mmio(u64 addr)
{
    u64 cr3;
    __asm__ volatile("mov %%cr3, %0" : "=r"(cr3));
    u64 *pml4 = (u64 *)(cr3 & PTE_ADDR);
    if (addr >= (512ul << 30) || !(pml4[0] & PTE_P))
        return -1;
    u64 *pdpt = (u64 *)(pml4[0] & PTE_ADDR);
    u64 gib = addr >> 30;
    if (pdpt[gib] & PTE_P)
        return 0;
    if (page_dirs_used >= 4)
        return -1;
    u64 *pd = page_dirs[page_dirs_used++];
    for (u64 i = 0; i < 512; i++)
        pd[i] = ((gib << 30) + (i << 21)) | PTE_P | PTE_RW | PTE_PS | PTE_PCD | PTE_PWT;
    pdpt[gib] = (u64)pd | PTE_P | PTE_RW;
    __asm__ volatile("mov %0, %%cr3" ::"r"(cr3) : "memory");
    return 0;
}

/* ---- pci-enum ----------------------------------------------------------- */

/* Sizes BAR0 (64-bit) with the all-ones protocol, decoding off, and restores it. */
static u64 size_bar0(u8 slot)
{
    u16 cmd = pci_read16(slot, 0x04);
    u32 lo = pci_read32(slot, 0x10), hi = pci_read32(slot, 0x14);
    pci_write16(slot, 0x04, cmd & ~0x3);
    pci_write32(slot, 0x10, 0xffffffff);
    pci_write32(slot, 0x14, 0xffffffff);
    u32 slo = pci_read32(slot, 0x10), shi = pci_read32(slot, 0x14);
    pci_write32(slot, 0x10, lo);
    pci_write32(slot, 0x14, hi);
    pci_write16(slot, 0x04, cmd);
    u64 mask = ((u64)shi << 32) | (slo & ~0xful);
    return ~mask + 1;
}

void test_pci_enum(void)
{
    int devices = 0, mismatches = 0, bad = 0;
    for (u8 slot = 0; slot < PCI_SLOTS; slot++) {
        u32 id_cf8 = pci_cf8_read32(slot, 0);
        u32 id_ecam = pci_ecam_read32(slot, 0);
        if (id_cf8 != id_ecam) {
            puts_("PCI-MISMATCH slot=");
            put_dec(slot);
            puts_(" cf8=");
            put_hex32(id_cf8);
            puts_(" ecam=");
            put_hex32(id_ecam);
            puts_("\n");
            mismatches++;
        }
        if ((id_cf8 & 0xffff) == 0xffff)
            continue;
        devices++;
        /* The whole standard header and capabilities must agree too. */
        for (u16 off = 0; off < 256; off += 4) {
            u32 a = pci_cf8_read32(slot, off), b = pci_ecam_read32(slot, off);
            if (a != b) {
                puts_("PCI-MISMATCH slot=");
                put_dec(slot);
                puts_(" off=");
                put_hex16(off);
                puts_(" cf8=");
                put_hex32(a);
                puts_(" ecam=");
                put_hex32(b);
                puts_("\n");
                mismatches++;
            }
        }
        u32 class = pci_read32(slot, 0x08);
        u64 bar0 = ((u64)pci_read32(slot, 0x14) << 32) | (pci_read32(slot, 0x10) & ~0xful);
        puts_("PCI slot=");
        put_dec(slot);
        puts_(" id=");
        put_hex16((u16)id_cf8);
        puts_(":");
        put_hex16((u16)(id_cf8 >> 16));
        puts_(" class=");
        put_hex8((u8)(class >> 24));
        put_hex8((u8)(class >> 16));
        puts_(" bar0=");
        put_hex64(bar0);
        puts_(" bar0type=");
        put_hex8((u8)(pci_read32(slot, 0x10) & 0xf));
        puts_(" caps=");
        int ncaps = 0;
        if (pci_read16(slot, 0x06) & 0x10) {
            u8 p = pci_read8(slot, 0x34) & 0xfc;
            while (p && ncaps < 48) {
                u8 id = pci_read8(slot, p);
                if (ncaps)
                    puts_(",");
                put_hex8(id);
                if (id == 0x09) {
                    puts_("/");
                    put_dec(pci_read8(slot, p + 3));
                }
                ncaps++;
                p = pci_read8(slot, p + 1) & 0xfc;
            }
        }
        if (!ncaps)
            puts_("none");
        if ((id_cf8 & 0xffff) == VIRTIO_VENDOR) {
            u64 size = size_bar0(slot);
            puts_(" bar0size=");
            put_hex64(size);
            /* After the sizing dance BAR0 must still be where it was and work. */
            u64 again = ((u64)pci_read32(slot, 0x14) << 32) | (pci_read32(slot, 0x10) & ~0xful);
            struct vdev d;
            int nth = 0;
            for (u8 s = 1; s < slot; s++)
                if (pci_cf8_read32(s, 0) == id_cf8)
                    nth++;
            if (again != bar0 || vdev_find(&d, (u16)(id_cf8 >> 16), nth) != 0 || d.slot != slot) {
                puts_(" bar0-after-sizing=BROKEN");
                bad++;
            } else {
                puts_(" numq=");
                put_dec(mmio_r16(d.common + CC_NUMQ));
            }
        }
        puts_("\n");
    }
    puts_("PCI-DEVICES ");
    put_dec(devices);
    puts_("\n");
    if (mismatches)
        fail("cf8-ecam-mismatch");
    else if (bad)
        fail("bar0-broken");
    else if (devices == 0)
        fail("no-devices");
    else
        pass();
    acpi_poweroff();
}
