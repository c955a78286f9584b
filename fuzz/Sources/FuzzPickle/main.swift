import CkptCore
import FuzzSupport

// The pickle layer on arbitrary bytes: decode, re-encode what decodes (and decode that again), scan the raw
// opcodes, and run the torch view over the graph. Any crash, hang or sanitizer report is a bug; errors are fine.
/// libFuzzer's entry point (also what `runFuzzer` hands to the driver).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    let input = bytes(data, count)
    var limits = PickleLimits()
    limits.maxStringLength = 1 << 20
    limits.maxNodes = 1 << 20
    limits.maxMemo = 1 << 16
    _ = PickleScanner.scan(input, label: "fuzz", limits: limits)
    guard let graph = try? PickleDecoder.decode(input, limits: limits) else { return 0 }
    _ = try? graph.stateDict(graph.root, limits: limits)
    _ = try? graph.allTensors(from: graph.root)
    for id in graph.reachable(from: graph.root).prefix(10_000) {
        _ = try? graph.tensor(id)
        _ = graph.numpyValue(id)
        _ = graph.scalarJSON(id)
        _ = graph.stringSet(id)
    }
    if let encoded = try? PickleEncoder.encode(graph) {
        guard let again = try? PickleDecoder.decode(encoded, limits: limits) else {
            fatalError("the encoder wrote a pickle its decoder refuses")
        }
        _ = again
    }
    return 0
}

runFuzzer(fuzzOne)
