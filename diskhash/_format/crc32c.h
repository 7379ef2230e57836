/* CRC-32C (Castagnoli, reflected polynomial 0x82F63B78): the frame checksum
 * of the payload log (docs/internals/store-format.md).  The standard CRC-32C of
 * iSCSI, ext4 and SCTP: init 0xFFFFFFFF, final xor 0xFFFFFFFF, so any
 * language's crc32c library checks our frames (tests compare with the
 * google-crc32c package).
 *
 * x86-64 CPUs with SSE4.2 compute it with the crc32 instruction, 8 bytes at
 * a time; every other CPU uses slice-by-8 tables.  Call dh_crc32c_init()
 * once (module import) before the first dh_crc32c().  Needs a little-endian
 * CPU, as the rest of diskhash does.
 */
#ifndef DISKHASH_CRC32C_H
#define DISKHASH_CRC32C_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define DH_CRC32C_POLY 0x82F63B78u

static uint32_t dh_crc32c_table[8][256];
static int dh_crc32c_have_hw = 0;

/* Slice-by-8: eight table lookups per 8 bytes (crc is the running,
 * already inverted value). */
static uint32_t dh_crc32c_soft(uint32_t crc, const unsigned char *p, size_t n)
{
    uint64_t w;
    while (n >= 8) {
        memcpy(&w, p, 8);
        w ^= crc;
        crc = dh_crc32c_table[7][w & 0xFF] ^ dh_crc32c_table[6][(w >> 8) & 0xFF]
            ^ dh_crc32c_table[5][(w >> 16) & 0xFF] ^ dh_crc32c_table[4][(w >> 24) & 0xFF]
            ^ dh_crc32c_table[3][(w >> 32) & 0xFF] ^ dh_crc32c_table[2][(w >> 40) & 0xFF]
            ^ dh_crc32c_table[1][(w >> 48) & 0xFF] ^ dh_crc32c_table[0][w >> 56];
        p += 8;
        n -= 8;
    }
    while (n--)
        crc = (crc >> 8) ^ dh_crc32c_table[0][(crc ^ *p++) & 0xFF];
    return crc;
}

#if defined(__x86_64__) && defined(__GNUC__)
/* The crc32 instruction has a latency of three cycles and a throughput of
 * one: three streams over three adjacent blocks of DH_CRC32C_BLOCK bytes run
 * at once, and shifting a stream's register past the blocks after it (a
 * linear map over GF(2), applied with dh_crc32c_shift's tables) joins them. */
#define DH_CRC32C_BLOCK 128
static uint32_t dh_crc32c_shift_table[4][256];

static uint32_t dh_crc32c_shift(uint32_t r)
{
    return dh_crc32c_shift_table[0][r & 0xFF] ^ dh_crc32c_shift_table[1][(r >> 8) & 0xFF]
         ^ dh_crc32c_shift_table[2][(r >> 16) & 0xFF] ^ dh_crc32c_shift_table[3][r >> 24];
}

__attribute__((target("sse4.2")))
static uint32_t dh_crc32c_sse42(uint32_t crc, const unsigned char *p, size_t n)
{
    uint64_t a = crc, b, c, w;
    size_t i;
    while (n >= 3 * DH_CRC32C_BLOCK) {
        b = 0;
        c = 0;
        for (i = 0; i < DH_CRC32C_BLOCK; i += 8) {
            memcpy(&w, p + i, 8);
            a = __builtin_ia32_crc32di(a, w);
            memcpy(&w, p + DH_CRC32C_BLOCK + i, 8);
            b = __builtin_ia32_crc32di(b, w);
            memcpy(&w, p + 2 * DH_CRC32C_BLOCK + i, 8);
            c = __builtin_ia32_crc32di(c, w);
        }
        a = dh_crc32c_shift(dh_crc32c_shift((uint32_t)a) ^ (uint32_t)b) ^ (uint32_t)c;
        p += 3 * DH_CRC32C_BLOCK;
        n -= 3 * DH_CRC32C_BLOCK;
    }
    while (n >= 8) {
        memcpy(&w, p, 8);
        a = __builtin_ia32_crc32di(a, w);
        p += 8;
        n -= 8;
    }
    crc = (uint32_t)a;
    while (n--)
        crc = __builtin_ia32_crc32qi(crc, *p++);
    return crc;
}
#endif

#if defined(__x86_64__) && defined(__GNUC__)
/* The register after DH_CRC32C_BLOCK zero bytes, as a function of the
 * register before: linear, so a table per byte of the input register. */
static void dh_crc32c_fill_shift_table(void)
{
    static const unsigned char zeros[DH_CRC32C_BLOCK] = {0};
    uint32_t column[32];
    int bit, k, j;
    uint32_t v, r;
    for (bit = 0; bit < 32; bit++)
        column[bit] = dh_crc32c_soft(1u << bit, zeros, DH_CRC32C_BLOCK);
    for (j = 0; j < 4; j++)
        for (v = 0; v < 256; v++) {
            r = 0;
            for (k = 0; k < 8; k++)
                if (v & (1u << k))
                    r ^= column[8 * j + k];
            dh_crc32c_shift_table[j][v] = r;
        }
}
#endif

static void dh_crc32c_init(void)
{
    uint32_t i, c;
    int k;
    for (i = 0; i < 256; i++) {
        c = i;
        for (k = 0; k < 8; k++)
            c = (c >> 1) ^ (DH_CRC32C_POLY & (0u - (c & 1u)));
        dh_crc32c_table[0][i] = c;
    }
    for (i = 0; i < 256; i++)
        for (k = 1; k < 8; k++)
            dh_crc32c_table[k][i] = (dh_crc32c_table[k - 1][i] >> 8)
                ^ dh_crc32c_table[0][dh_crc32c_table[k - 1][i] & 0xFF];
#if defined(__x86_64__) && defined(__GNUC__)
    dh_crc32c_fill_shift_table();
    __builtin_cpu_init();
    dh_crc32c_have_hw = __builtin_cpu_supports("sse4.2") ? 1 : 0;
#endif
}

/* CRC-32C of n bytes at data, continuing from crc (0 to start). */
static inline uint32_t dh_crc32c(uint32_t crc, const void *data, size_t n)
{
    const unsigned char *p = (const unsigned char *)data;
    crc = ~crc;
#if defined(__x86_64__) && defined(__GNUC__)
    if (dh_crc32c_have_hw)
        return ~dh_crc32c_sse42(crc, p, n);
#endif
    return ~dh_crc32c_soft(crc, p, n);
}

#endif /* DISKHASH_CRC32C_H */
