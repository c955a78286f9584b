import CkptCore
import FuzzSupport
#if canImport(Glibc)
import Glibc
#endif

// The checkpoint reader on arbitrary files: open (zip or legacy), scan, describe, plan a strip and check it.
// The input is written to a file in /dev/shm because the reader works on paths, as the CLI does.
let path = "/dev/shm/ckpt-fuzz-\(getpid()).pt"

/// libFuzzer's entry point (also what `runFuzzer` hands to the driver).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
    guard fd >= 0 else { fatalError("cannot write \(path)") }
    if let data, count > 0 { _ = write(fd, data, count) }
    close(fd)
    if let report = try? Checkpoint.scan(path: path) { _ = report.table; _ = report.json.rendered() }
    guard let c = try? Checkpoint(path: path) else { return 0 }
    _ = try? c.info()
    _ = try? c.keys()
    _ = c.dangerousGlobals()
    for r in c.records.prefix(100) { _ = try? c.record(named: r.name) }
    var o = StripOptions()
    o.half = true
    if let plan = try? c.planStrip(o) {
        _ = try? PickleEncoder.encode(plan.graph)
        for s in plan.storages.prefix(64) {
            _ = try? c.streamStorage(s.sourceKey, chunkSize: 4096) { _ in }
        }
    }
    return 0
}

runFuzzer(fuzzOne)
