/*
 * The `firmware-id` scenario: what the guest finds in the firmware areas
 * without Linux. Scans the F segment for the SMBIOS 3.0 anchor as Linux's
 * DMI scan does, checks the entry point's checksum, walks the structure
 * table and prints the type 1 serial number and UUID bytes and each type 11
 * OEM string; then reads vendor:device of slot 0 and 1 through the ECAM
 * window of PCI segment 1 (right after segment 0's).
 */
#include "guest.h"

#define SEG1_ECAM (ECAM_BASE + 0x100000ul)

/* String `n` (1-based) of the set starting at `s`, or "" for 0/missing. */
static const char *smbios_string(const u8 *s, const u8 *end, u8 n)
{
    if (n == 0)
        return "";
    for (u8 i = 1; s < end && *s; i++) {
        if (i == n)
            return (const char *)s;
        while (s < end && *s)
            s++;
        s++;
    }
    return "";
}

static void smbios(void)
{
    const u8 *ep = 0;
    for (u64 a = 0xf0000; a < 0x100000; a += 16) {
        const u8 *p = (const u8 *)a;
        if (p[0] == '_' && p[1] == 'S' && p[2] == 'M' && p[3] == '3' && p[4] == '_') {
            ep = p;
            break;
        }
    }
    if (!ep) {
        fail("no-smbios-anchor");
        return;
    }
    u8 sum = 0;
    for (int i = 0; i < ep[6]; i++)
        sum += ep[i];
    puts_("SMBIOS ");
    put_dec(ep[7]);
    puts_(".");
    put_dec(ep[8]);
    puts_(sum == 0 ? " checksum=ok\n" : " checksum=bad\n");
    u32 len = *(const u32 *)(ep + 12);
    const u8 *t = (const u8 *)*(const u64 *)(ep + 16);
    const u8 *end = t + len;
    while (t + 4 <= end) {
        u8 type = t[0], flen = t[1];
        const u8 *strings = t + flen;
        if (type == 1 && flen >= 0x1b) {
            puts_("SMBIOS-SERIAL=");
            puts_(smbios_string(strings, end, t[7]));
            puts_("\nSMBIOS-UUID=");
            for (int i = 8; i < 24; i++)
                put_hex8(t[i]);
            puts_("\n");
        } else if (type == 11 && flen >= 5) {
            for (u8 i = 1; i <= t[4]; i++) {
                puts_("SMBIOS-OEM=");
                puts_(smbios_string(strings, end, i));
                puts_("\n");
            }
        }
        if (type == 127) {
            puts_("SMBIOS-END\n");
            break;
        }
        /* Skip the formatted area and the string set (ends in two NULs). */
        const u8 *s = strings;
        while (s + 1 < end && (s[0] || s[1]))
            s++;
        t = s + 2;
    }
}

void test_firmware_id(void)
{
    smbios();
    for (u8 slot = 0; slot < 2; slot++) {
        u32 id = mmio_r32(SEG1_ECAM + ((u64)slot << 15));
        puts_("SEG1 slot=");
        put_dec(slot);
        puts_(" id=");
        put_hex16((u16)id);
        puts_(":");
        put_hex16((u16)(id >> 16));
        puts_("\n");
    }
    pass();
    acpi_poweroff();
}
