import Foundation
import Testing
@testable import CkptCore

/// Saves tensors that are views of every kind and prints, for each, the bytes of `t.contiguous()` as hex.
private let viewsScript = #"""
import sys, json, torch, collections
torch.manual_seed(4)
big = torch.randn(9, 7, 5)
views = collections.OrderedDict(
    transposed=big[0].t(),
    permuted=big.permute(2, 0, 1),
    permuted_sliced=big.permute(1, 2, 0)[1:6:2, :, 3:8],
    step=big[1:8:3, ::2, 1:],
    narrow_of_transposed=big[4].t()[1:4],
    offset=big.reshape(-1)[100:140].reshape(5, 8),
    expanded=torch.randn(3, 1, 2).expand(3, 4, 2),
    expanded_inner=torch.randn(4, 1).expand(4, 6),
    scalar=big[2, 3, 4],
    empty=big[:, :0],
    half_t=big.half()[3].t(),
    long_t=torch.arange(60).reshape(6, 10).t()[::3],
    bool_t=(big[5] > 0).t(),
    contiguous=big[2:4],
)
torch.save(views, sys.argv[1])
print(json.dumps({k: v.contiguous().numpy().tobytes().hex() for k, v in views.items()}))
"""#

/// Prints, for each float dtype pair, the source bytes and `src.to(dst)`'s bytes as hex.
private let castScript = #"""
import json, torch
torch.manual_seed(6)
special = [0.0, -0.0, float("inf"), float("-inf"), float("nan"), 1.0, 65504.0, 65520.0, 1e5, 6.1e-5, 5.96e-8,
           2.98e-8, 1e-40, 3.4e38, 1e300, -1e-300, 1 + 2 ** -11, 1 + 3 * 2 ** -11, 1 + 2 ** -8, 1 + 2 ** -11 + 2 ** -30]
base = torch.cat([torch.tensor(special, dtype=torch.float64),
                  torch.randn(300, dtype=torch.float64) * torch.logspace(-9, 9, 300, dtype=torch.float64)])
dts = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32, "float64": torch.float64}
out = []
for s, sd in dts.items():
    src = base.to(sd)
    if s == "float64":
        src = src[~src.isnan()]  # torch's float64 -> bfloat16 NaN depends on the element's position
    for d, dd in dts.items():
        out.append([s, d, src.numpy().tobytes().hex() if s != "bfloat16" else src.view(torch.int16).numpy().tobytes().hex(),
                    src.to(dd).view({2: torch.int16, 4: torch.int32, 8: torch.int64}[dd.itemsize]).numpy().tobytes().hex()])
print(json.dumps(out))
"""#

private func bytes(hex: String) -> [UInt8] {
    var out: [UInt8] = []
    var it = hex.makeIterator()
    while let a = it.next(), let b = it.next() { out.append(UInt8(String([a, b]), radix: 16)!) }
    return out
}

@Suite("Tensor data: strided reads and dtype casts against torch")
struct TensorDataTests {
    @Test("a view read in pieces gives the bytes of torch's .contiguous(), whatever the box and buffer sizes")
    func stridedReadsMatchContiguous() throws {
        let folder = try Oracle.tempDir()
        defer { try? FileManager.default.removeItem(at: folder) }
        let path = folder.appendingPathComponent("views.pt").path
        let expected = try JSONDecoder().decode([String: String].self, from: Oracle.run(viewsScript, [path]))
        let c = try Checkpoint(path: path)
        let view = try c.graph.stateDict(c.graph.root)
        #expect(view.count == expected.count)
        for (box, buffer) in [(TensorElementReader.boxBytes, 1 << 16), (64, 24), (8, 3), (200, 1000)] {
        for t in view {
            let r = try TensorElementReader(c, storageKey: t.tensor.storage.key, itemSize: t.tensor.dtype.itemSize,
                                            view: StorageView(t.tensor), boxBytes: box)
            var got: [UInt8] = []
            let size = max(buffer / t.tensor.dtype.itemSize, 1) * t.tensor.dtype.itemSize
            let buf = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: 8)
            defer { buf.deallocate() }
            while true {
                let n = try r.read(into: buf)
                if n == 0 { break }
                got += buf[0..<n]
            }
            #expect(got == bytes(hex: expected[t.name]!), "\(t.name) box \(box) buffer \(buffer)")
        }
        }
    }

    @Test("float casts are bit-identical to torch's .to(dtype), fed in odd chunks")
    func castsMatchTorch() throws {
        let cases = try JSONDecoder().decode([[String]].self, from: Oracle.run(castScript))
        #expect(cases.count == 16)
        for c in cases {
            let from = DType(rawValue: c[0])!, to = DType(rawValue: c[1])!
            let source = bytes(hex: c[2])
            for chunk in [3, 7, 4096] {
                var converter = try DTypeConverter(from: from, to: to, chunkSize: chunk)
                var got: [UInt8] = []
                var i = 0
                while i < source.count {
                    let part = Array(source[i..<min(i + chunk, source.count)])
                    try part.withUnsafeBytes { try converter.convert($0) { got += $0 } }
                    i += chunk
                }
                try converter.finish()
                #expect(got == bytes(hex: c[3]), "\(from) -> \(to) in chunks of \(chunk)")
            }
        }
    }

    @Test("casts outside the float types are refused")
    func unsupportedCast() {
        #expect(throws: CheckpointError.self) { try DTypeConverter(from: .int64, to: .float32, chunkSize: 16) }
    }
}
