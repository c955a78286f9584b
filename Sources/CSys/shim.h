// The C that ckpt's Swift code calls besides libzip: zlib's CRC-32 (crc32_z, crc32_combine), the carry-less
// multiply CRC-32 for x86-64, and the Linux syscalls Swift's Glibc module does not export (copy_file_range,
// sync_file_range). Kept out of CLibzip so that module wraps libzip alone.
#include <zlib.h>

#if defined(__linux__)
#include <errno.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <unistd.h>

/// copy_file_range(2), which Swift's Glibc module does not export: copies `length` bytes from `in` at `*in_offset`
/// to `out` at its file position inside the kernel. Returns bytes copied, or -1 with errno (ENOSYS when the kernel
/// lacks it).
static inline int64_t ckpt_copy_file_range(int in, int64_t *in_offset, int out, uint64_t length) {
#if defined(SYS_copy_file_range)
    return (int64_t)syscall(SYS_copy_file_range, in, in_offset, out, (void *)0, (size_t)length, 0u);
#else
    errno = ENOSYS;
    return -1;
#endif
}

/// sync_file_range(fd, offset, count, SYNC_FILE_RANGE_WRITE): starts writeback of a range's dirty pages without
/// waiting for it, so that the fsync at the end of a long write finds most pages already on their way to disk.
/// Returns 0, or -1 with errno (ENOSYS when the kernel lacks it; the caller ignores failures: it is only a hint).
static inline int ckpt_start_writeback(int fd, int64_t offset, int64_t count) {
#if defined(SYS_sync_file_range)
    return (int)syscall(SYS_sync_file_range, fd, offset, count, 2u /* SYNC_FILE_RANGE_WRITE */);
#else
    errno = ENOSYS;
    return -1;
#endif
}
#endif

#if defined(__x86_64__) && (defined(__clang__) || defined(__GNUC__))
#include <cpuid.h>
#include <immintrin.h>
#include <stddef.h>

/// Whether the CPU has PCLMULQDQ and SSE4.1 (for ckpt_crc32_clmul).
static inline int ckpt_crc32_clmul_available(void) {
    unsigned int a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
    return (c & bit_PCLMUL) != 0 && (c & bit_SSE4_1) != 0;
}

/// zlib's CRC-32 (reflected polynomial 0xEDB88320) of `len` bytes, `len` a multiple of 16 and at least 64,
/// continuing `crc` in zlib's convention (start from 0), by carry-less multiplication: Intel's "Fast CRC
/// Computation Using PCLMULQDQ", folding four 128-bit lanes (the constants are the paper's, for this polynomial,
/// as Chromium's zlib uses them). Call only when ckpt_crc32_clmul_available().
__attribute__((target("pclmul,sse4.1")))
static inline uint32_t ckpt_crc32_clmul(uint32_t crc, const unsigned char *buf, size_t len) {
    const __m128i k1k2 = _mm_set_epi64x(0x01c6e41596LL, 0x0154442bd4LL);
    const __m128i k3k4 = _mm_set_epi64x(0x00ccaa009eLL, 0x01751997d0LL);
    const __m128i k5k0 = _mm_set_epi64x(0x0000000000LL, 0x0163cd6124LL);
    const __m128i poly = _mm_set_epi64x(0x01f7011641LL, 0x01db710641LL);
    __m128i x0, x1, x2, x3, x4, x5, x6, x7, x8, y5, y6, y7, y8;

    x1 = _mm_loadu_si128((const __m128i *)(buf + 0x00));
    x2 = _mm_loadu_si128((const __m128i *)(buf + 0x10));
    x3 = _mm_loadu_si128((const __m128i *)(buf + 0x20));
    x4 = _mm_loadu_si128((const __m128i *)(buf + 0x30));
    x1 = _mm_xor_si128(x1, _mm_cvtsi32_si128((int)~crc));
    x0 = k1k2;
    buf += 64;
    len -= 64;
    while (len >= 64) {
        x5 = _mm_clmulepi64_si128(x1, x0, 0x00);
        x6 = _mm_clmulepi64_si128(x2, x0, 0x00);
        x7 = _mm_clmulepi64_si128(x3, x0, 0x00);
        x8 = _mm_clmulepi64_si128(x4, x0, 0x00);
        x1 = _mm_clmulepi64_si128(x1, x0, 0x11);
        x2 = _mm_clmulepi64_si128(x2, x0, 0x11);
        x3 = _mm_clmulepi64_si128(x3, x0, 0x11);
        x4 = _mm_clmulepi64_si128(x4, x0, 0x11);
        y5 = _mm_loadu_si128((const __m128i *)(buf + 0x00));
        y6 = _mm_loadu_si128((const __m128i *)(buf + 0x10));
        y7 = _mm_loadu_si128((const __m128i *)(buf + 0x20));
        y8 = _mm_loadu_si128((const __m128i *)(buf + 0x30));
        x1 = _mm_xor_si128(_mm_xor_si128(x1, x5), y5);
        x2 = _mm_xor_si128(_mm_xor_si128(x2, x6), y6);
        x3 = _mm_xor_si128(_mm_xor_si128(x3, x7), y7);
        x4 = _mm_xor_si128(_mm_xor_si128(x4, x8), y8);
        buf += 64;
        len -= 64;
    }
    // Fold the four lanes into one.
    x0 = k3k4;
    x5 = _mm_clmulepi64_si128(x1, x0, 0x00);
    x1 = _mm_clmulepi64_si128(x1, x0, 0x11);
    x1 = _mm_xor_si128(_mm_xor_si128(x1, x2), x5);
    x5 = _mm_clmulepi64_si128(x1, x0, 0x00);
    x1 = _mm_clmulepi64_si128(x1, x0, 0x11);
    x1 = _mm_xor_si128(_mm_xor_si128(x1, x3), x5);
    x5 = _mm_clmulepi64_si128(x1, x0, 0x00);
    x1 = _mm_clmulepi64_si128(x1, x0, 0x11);
    x1 = _mm_xor_si128(_mm_xor_si128(x1, x4), x5);
    // Remaining 16-byte blocks.
    while (len >= 16) {
        x2 = _mm_loadu_si128((const __m128i *)buf);
        x5 = _mm_clmulepi64_si128(x1, x0, 0x00);
        x1 = _mm_clmulepi64_si128(x1, x0, 0x11);
        x1 = _mm_xor_si128(_mm_xor_si128(x1, x2), x5);
        buf += 16;
        len -= 16;
    }
    // 128 bits to 64.
    x2 = _mm_clmulepi64_si128(x1, x0, 0x10);
    x3 = _mm_setr_epi32(~0, 0, ~0, 0);
    x1 = _mm_srli_si128(x1, 8);
    x1 = _mm_xor_si128(x1, x2);
    x0 = k5k0;
    x2 = _mm_srli_si128(x1, 4);
    x1 = _mm_and_si128(x1, x3);
    x1 = _mm_clmulepi64_si128(x1, x0, 0x00);
    x1 = _mm_xor_si128(x1, x2);
    // Barrett reduction to 32 bits.
    x0 = poly;
    x2 = _mm_and_si128(x1, x3);
    x2 = _mm_clmulepi64_si128(x2, x0, 0x10);
    x2 = _mm_and_si128(x2, x3);
    x2 = _mm_clmulepi64_si128(x2, x0, 0x00);
    x1 = _mm_xor_si128(x1, x2);
    return ~(uint32_t)_mm_extract_epi32(x1, 1);
}
#endif

// SHA-256 from libcrypto (OpenSSL; SHA-NI where the CPU has it): `ckpt average` records each input's digest.
#include <openssl/evp.h>
