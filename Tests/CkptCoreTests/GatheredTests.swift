import Foundation
import Testing
@testable import CkptCore

/// The gathering of a logical tensor from chunk boxes and byte runs (Formats/Gathered.swift), against the element
/// each position of the tensor must hold. Real DCP and DeepSpeed folders are read against torch's and DeepSpeed's own
/// consolidation in Tests/interop/test_distributed.py.
@Suite struct GatheredTests {
    /// A tensor whose element at row-major position p is the 32-bit value p, split into chunks on a grid; each
    /// chunk's elements are written to one file, contiguous or transposed (reversed dimension order, as `t()` keeps).
    struct Case {
        var shape: [Int64]
        var cuts: [[Int64]]  // per dimension, the chunk boundaries inside (0, size)
        var transposed: Set<Int>  // chunk indices stored with reversed strides
    }

    static func chunks(_ c: Case) -> [(offsets: [Int64], sizes: [Int64])] {
        var boxes: [(offsets: [Int64], sizes: [Int64])] = [([], [])]
        for (d, size) in c.shape.enumerated() {
            let edges = [0] + c.cuts[d] + [size]
            boxes = boxes.flatMap { b in
                (0..<(edges.count - 1)).map { j in (b.offsets + [edges[j]], b.sizes + [edges[j + 1] - edges[j]]) }
            }
        }
        return boxes
    }

    static func source(_ c: Case, folder: URL, shuffle: Bool) throws -> GatheredSource {
        var boxes = chunks(c)
        if shuffle { boxes.reverse() }  // chunks listed in no particular order
        let rowStrides = StateDictGraph.contiguousStrides(c.shape)
        var bytes: [UInt8] = Array("header".utf8)  // the data starts past byte 0
        var located: [GatheredChunk] = []
        for (n, box) in boxes.enumerated() {
            let dims = box.sizes.count
            let order = c.transposed.contains(n) ? Array((0..<dims).reversed()) : Array(0..<dims)
            // Strides for the chosen dimension order: the last in `order` varies fastest.
            var strides = [Int64](repeating: 1, count: dims)
            var acc: Int64 = 1
            for d in order.reversed() { strides[d] = acc; acc *= max(box.sizes[d], 1) }
            let count = box.sizes.reduce(1, *)
            var data = [UInt32](repeating: 0, count: Int(count))
            // Every element of the box, at its place in the chunk's data.
            var index = [Int64](repeating: 0, count: dims)
            for _ in 0..<count {
                var global: Int64 = 0, local: Int64 = 0
                for d in 0..<dims {
                    global += (box.offsets[d] + index[d]) * rowStrides[d]
                    local += index[d] * strides[d]
                }
                data[Int(local)] = UInt32(global)
                var d = dims - 1
                while d >= 0 { index[d] += 1; if index[d] < box.sizes[d] { break }; index[d] = 0; d -= 1 }
            }
            let base = UInt64(bytes.count)
            data.withUnsafeBytes { bytes += $0 }
            located.append(GatheredChunk(offsets: box.offsets, sizes: box.sizes,
                                         location: ChunkLocation(file: 0, base: base, strides: strides,
                                                                 extent: base..<UInt64(bytes.count), label: "chunk \(n)")))
        }
        let path = folder.appendingPathComponent("data-\(UUID().uuidString)").path
        FileManager.default.createFile(atPath: path, contents: Data(bytes))
        let t = GatheredTensor(name: "t", dtype: .int32, shape: c.shape, layout: .boxes(located))
        try t.checkCoverage()
        return GatheredSource(tensors: [t], files: try GatheredFiles(paths: [path]))
    }

    static func expected(_ shape: [Int64]) -> [UInt8] {
        let values = (0..<UInt32(shape.reduce(1, *))).map { $0 }
        return values.withUnsafeBytes { Array($0) }
    }

    static func streamed(_ s: GatheredSource, chunkSize: Int) throws -> [UInt8] {
        var out: [UInt8] = []
        try s.stream("0", chunkSize: chunkSize) { out += $0 }
        return out
    }

    static let cases: [Case] = [
        Case(shape: [7, 4], cuts: [[4], []], transposed: []),  // FSDP2 Shard(0), uneven
        Case(shape: [6, 4], cuts: [[], [2]], transposed: []),  // Shard(1): column boxes
        Case(shape: [5, 6, 3], cuts: [[2], [1, 4], []], transposed: [1]),  // a 2-D mesh, one chunk transposed
        Case(shape: [9], cuts: [[2, 3, 8]], transposed: []),
        Case(shape: [4, 5], cuts: [[], []], transposed: [0]),  // one whole chunk saved as `t()`
        Case(shape: [3, 1, 4], cuts: [[1], [], [3]], transposed: []),
        Case(shape: [], cuts: [], transposed: []),  // a 0-d tensor
    ]

    @Test(arguments: cases.indices)
    func gathersRowMajor(_ i: Int) throws {
        let folder = FileManager.default.temporaryDirectory
        for shuffle in [false, true] {
            let s = try Self.source(Self.cases[i], folder: folder, shuffle: shuffle)
            try s.prepare(nil)
            let want = Self.expected(Self.cases[i].shape)
            for chunkSize in [4, 12, 1 << 20] {
                #expect(try Self.streamed(s, chunkSize: chunkSize) == want, "case \(i) shuffle \(shuffle) chunk \(chunkSize)")
            }
            // Random access: every window of a few lengths.
            for start in stride(from: 0, to: want.count, by: 3) {
                for length in [1, 5, 8] where start + length <= want.count {
                    var got = [UInt8](repeating: 0, count: length)
                    try got.withUnsafeMutableBytes { try s.read("0", at: Int64(start), into: $0) }
                    #expect(got == Array(want[start..<(start + length)]), "case \(i) read \(start)+\(length)")
                }
            }
        }
    }

    @Test func refusesHolesOverlapsAndBoxesOutside() {
        func tensor(_ boxes: [([Int64], [Int64])]) -> GatheredTensor {
            GatheredTensor(name: "w", dtype: .float32, shape: [4, 4],
                           layout: .boxes(boxes.map { GatheredChunk(offsets: $0.0, sizes: $0.1, location: nil) }))
        }
        let refusals: [([([Int64], [Int64])], String)] = [
            ([([0, 0], [2, 4])], "hole"),
            ([([0, 0], [3, 4]), ([2, 0], [2, 4])], "overlap"),
            ([([0, 0], [2, 4]), ([2, 0], [3, 4])], "outside"),
            ([([0, 0], [2, 4]), ([2, 1], [2, 4])], "outside"),
            ([([0, 0], [4, 2]), ([0, 1], [4, 2])], "overlap"),
            ([], "no chunk"),
        ]
        for (boxes, why) in refusals {
            #expect(throws: CheckpointError.self, "\(why)") { try tensor(boxes).checkCoverage() }
        }
        #expect(throws: Never.self) { try tensor([([2, 0], [2, 4]), ([0, 0], [2, 2]), ([0, 2], [2, 2])]).checkCoverage() }
    }

    @Test func runsAndConversion() throws {
        // Two files holding a bfloat16 tensor's halves; streamed as float32 as DTypeConverter converts.
        let folder = FileManager.default.temporaryDirectory
        let values: [UInt16] = [0x3F80, 0xC000, 0x7F80, 0x0001, 0x4049]  // 1, -2, inf, a subnormal, 3.140625
        var paths: [String] = []
        for part in [Array(values[0..<2]), Array(values[2...])] {
            let p = folder.appendingPathComponent("run-\(UUID().uuidString)").path
            FileManager.default.createFile(atPath: p, contents: Data([9, 9]) + part.withUnsafeBytes { Data($0) })
            paths.append(p)
        }
        let t = GatheredTensor(name: "b", dtype: .float32, sourceDType: .bfloat16, shape: [5],
                               layout: .runs([ByteRun(file: 0, offset: 2, count: 4), ByteRun(file: 1, offset: 2, count: 6)]))
        try t.checkCoverage()
        let s = GatheredSource(tensors: [t], files: try GatheredFiles(paths: paths))
        let got = try Self.streamed(s, chunkSize: 3)
        let want = values.map { Float(bitPattern: UInt32($0) << 16) }.withUnsafeBytes { Array($0) }
        #expect(got == want)
        #expect(s.storageBytes("0") == 20)
        let short = GatheredTensor(name: "b", dtype: .bfloat16, shape: [5], layout: .runs([ByteRun(file: 0, offset: 2, count: 4)]))
        #expect(throws: CheckpointError.self) { try short.checkCoverage() }
        let past = GatheredSource(tensors: [GatheredTensor(name: "b", dtype: .bfloat16, shape: [2],
                                                           layout: .runs([ByteRun(file: 0, offset: 4, count: 4)]))],
                                  files: try GatheredFiles(paths: paths))
        #expect(throws: CheckpointError.self) { try past.prepare(nil) }
        #expect(throws: CheckpointError.self) { try GatheredFiles(paths: [folder.appendingPathComponent("missing-\(UUID())").path]) }
    }
}
