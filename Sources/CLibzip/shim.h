// libzip, for one job: reading the compressed (deflated) records of zips that other tools wrote. torch.save never
// compresses a record, and ckpt reads stored records itself (ZipReader: its own central directory walk and pread);
// but TorchScript archives and zips re-packed by other tools hold deflated records, which libzip inflates and
// CRC-checks. ckpt's own CRC and syscall shims live in CSys.
#include <zip.h>
