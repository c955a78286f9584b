import CkptCore
import FuzzSupport

/// libFuzzer's entry point: the pickle layer on arbitrary bytes (see `FuzzEntryPoints.pickle`).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    FuzzEntryPoints.pickle(bytes(data, count))
    return 0
}

runFuzzer(fuzzOne)
