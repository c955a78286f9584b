// The C that ckpt's Swift code calls besides libzip: zlib's CRC-32 (crc32_z, crc32_combine), the carry-less
// multiply CRC-32 for x86-64, ckpt average's arithmetic (loops the compiler vectorizes, float16 conversions by
// F16C), and the Linux syscalls Swift's Glibc module does not export (copy_file_range, sync_file_range). Kept out
// of CLibzip so that module wraps libzip alone.
#include <stddef.h>
#include <stdint.h>
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

// ---- ckpt average's arithmetic (little-endian hosts) ------------------------------------------------------------
// Each step rounds once, as torch's separate float64 tensor operations do: the product and the sum are separate
// operations and contraction into fused multiply-adds is off. Four elements at a time in clang's vector types (each
// lane is the scalar IEEE operation; the compiler picks the instructions), the tail one at a time.
#pragma STDC FP_CONTRACT OFF
typedef double ckpt_d4 __attribute__((ext_vector_type(4)));
typedef float ckpt_f4 __attribute__((ext_vector_type(4)));
typedef uint16_t ckpt_u16x4 __attribute__((ext_vector_type(4)));
typedef uint32_t ckpt_u32x4 __attribute__((ext_vector_type(4)));

/// `acc[j] = p[j]` when `first`, else `acc[j] = acc[j] + p[j]`, for lanes j..j+3.
static inline void ckpt_avg_store4(double *acc, size_t j, ckpt_d4 p, int first) {
    if (!first) {
        ckpt_d4 a;
        __builtin_memcpy(&a, acc + j, sizeof a);
        p = a + p;
    }
    __builtin_memcpy(acc + j, &p, sizeof p);
}

// `acc[j] = w * x[j]` when `first`, else `acc[j] = acc[j] + w * x[j]`, for `x` of element type T (VT: four of them).
#define CKPT_AVG_ADD(NAME, T, VT)                                                                     \
    static inline void NAME(const T *x, double *acc, size_t n, double w, int first) {                 \
        size_t j = 0;                                                                                  \
        for (; j + 4 <= n; j += 4) {                                                                   \
            VT v;                                                                                      \
            __builtin_memcpy(&v, x + j, sizeof v);                                                     \
            ckpt_avg_store4(acc, j, w * __builtin_convertvector(v, ckpt_d4), first);                   \
        }                                                                                              \
        for (; j < n; j++) {                                                                           \
            double p = w * (double)x[j];                                                               \
            acc[j] = first ? p : acc[j] + p;                                                           \
        }                                                                                              \
    }
/// The float32 and float64 accumulations (`ckpt_avg_add_f32`, `ckpt_avg_add_f64`).
CKPT_AVG_ADD(ckpt_avg_add_f32, float, ckpt_f4)
CKPT_AVG_ADD(ckpt_avg_add_f64, double, ckpt_d4)

/// The same for bfloat16 `x` (the high half of a float32: exact).
static inline void ckpt_avg_add_bf16(const uint16_t *x, double *acc, size_t n, double w, int first) {
    size_t j = 0;
    for (; j + 4 <= n; j += 4) {
        ckpt_u16x4 h;
        __builtin_memcpy(&h, x + j, sizeof h);
        ckpt_u32x4 bits = __builtin_convertvector(h, ckpt_u32x4) << 16;
        ckpt_f4 f;
        __builtin_memcpy(&f, &bits, sizeof f);
        ckpt_avg_store4(acc, j, w * __builtin_convertvector(f, ckpt_d4), first);
    }
    for (; j < n; j++) {
        uint32_t bits = (uint32_t)x[j] << 16;
        float f;
        __builtin_memcpy(&f, &bits, 4);
        double p = w * (double)f;
        acc[j] = first ? p : acc[j] + p;
    }
}

/// `out[j] = acc[j] / total` (float64).
static inline void ckpt_avg_div_f64(const double *acc, double *out, size_t n, double total) {
    size_t j = 0;
    for (; j + 4 <= n; j += 4) {
        ckpt_d4 a;
        __builtin_memcpy(&a, acc + j, sizeof a);
        a = a / total;
        __builtin_memcpy(out + j, &a, sizeof a);
    }
    for (; j < n; j++) out[j] = acc[j] / total;
}

/// `out[j] = (float)(acc[j] / total)`: the quotient rounded once to float32 (round to nearest even).
static inline void ckpt_avg_div_f32(const double *acc, float *out, size_t n, double total) {
    size_t j = 0;
    for (; j + 4 <= n; j += 4) {
        ckpt_d4 a;
        __builtin_memcpy(&a, acc + j, sizeof a);
        ckpt_f4 f = __builtin_convertvector(a / total, ckpt_f4);
        __builtin_memcpy(out + j, &f, sizeof f);
    }
    for (; j < n; j++) out[j] = (float)(acc[j] / total);
}

#if defined(__x86_64__) && (defined(__clang__) || defined(__GNUC__))
/// Whether the CPU converts float16 in hardware (F16C, with the AVX state the OS saves).
static inline int ckpt_f16c_available(void) {
    unsigned int a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
    if ((c & bit_F16C) == 0 || (c & bit_AVX) == 0 || (c & bit_OSXSAVE) == 0) return 0;
    unsigned int lo, hi;
    __asm__("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return (lo & 6) == 6;  // XMM and YMM state enabled
}

/// float16 -> float32, exact (F16C). Call only when ckpt_f16c_available().
__attribute__((target("avx,f16c")))
static inline void ckpt_f16c_to_float(const uint16_t *src, float *dst, size_t n) {
    size_t j = 0;
    for (; j + 8 <= n; j += 8) _mm256_storeu_ps(dst + j, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + j))));
    for (; j < n; j++) dst[j] = _cvtsh_ss(src[j]);
}

/// float32 -> float16, rounded to nearest even; a NaN keeps its sign and the high bits of its payload, quieted
/// (F16C, bit for bit what compiler-rt's __truncsfhf2 gives). Call only when ckpt_f16c_available().
__attribute__((target("avx,f16c")))
static inline void ckpt_f16c_from_float(const float *src, uint16_t *dst, size_t n) {
    size_t j = 0;
    for (; j + 8 <= n; j += 8) {
        _mm_storeu_si128((__m128i *)(dst + j), _mm256_cvtps_ph(_mm256_loadu_ps(src + j), _MM_FROUND_TO_NEAREST_INT));
    }
    for (; j < n; j++) dst[j] = _cvtss_sh(src[j], _MM_FROUND_TO_NEAREST_INT);
}
#endif

// SHA-256 from libcrypto (OpenSSL; SHA-NI where the CPU has it): `ckpt average` records each input's digest.
#include <openssl/crypto.h>
#include <openssl/evp.h>

/// Initializes libcrypto without its exit-time cleanup: `ckpt average` hashes on a second thread, which may still be
/// digesting when a failure ends the process; OpenSSL's atexit handler would free what that thread is using (a
/// crash instead of the one-line error). Call before any other use of libcrypto; returns 1 on success.
static inline int ckpt_crypto_init(void) {
    return OPENSSL_init_crypto(OPENSSL_INIT_NO_ATEXIT, (void *)0);
}
