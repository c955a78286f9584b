#include <zip.h>
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
#endif
