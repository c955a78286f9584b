import CkptCore
import FuzzSupport
#if canImport(Glibc)
import Glibc
#endif

// The reader works on paths, as the CLI does: each input is written to a file in /dev/shm first.
let path = "/dev/shm/ckpt-fuzz-\(getpid()).pt"

/// libFuzzer's entry point: the checkpoint reader on an arbitrary file (see `FuzzEntryPoints.checkpoint`).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
    guard fd >= 0 else { fatalError("cannot write \(path)") }
    if let data, count > 0 { precondition(write(fd, data, count) == count, "short write to \(path)") }
    close(fd)
    FuzzEntryPoints.checkpoint(path: path)
    FuzzEntryPoints.dcpMetadata(path: path)
    return 0
}

atexit { unlink(path) }
runFuzzer(fuzzOne)
