import Foundation
import Testing
@testable import CkptCore

@Suite struct TensorTests {
    /// Element sizes agree with torch's `element_size()` for every dtype torch has.
    @Test func itemSizesMatchTorch() throws {
        let out = try Oracle.run("""
        import torch, json
        d = {str(t).replace('torch.', ''): torch.empty(0, dtype=t).element_size()
             for t in {getattr(torch, n) for n in dir(torch) if isinstance(getattr(torch, n), torch.dtype)}}
        print(json.dumps(d))
        """)
        let sizes = try #require(try JSONSerialization.jsonObject(with: out) as? [String: Int])
        for d in DType.allCases {
            let s = try #require(sizes[d.rawValue], "torch has no dtype \(d.rawValue)")
            #expect(d.itemSize == s, "\(d.rawValue)")
        }
        // every dtype torch can save is known here
        let saved = sizes.keys.filter { !$0.hasPrefix("int") || ["int8", "int16", "int32", "int64"].contains($0) }
            .filter { !$0.hasPrefix("uint") || ["uint8", "uint16", "uint32", "uint64"].contains($0) }
        for name in saved { #expect(DType(rawValue: name) != nil, "\(name) unknown") }
    }

    /// The state_dict view of every fixture equals what torch reported (fixtures/*.facts.json).
    @Test(arguments: ["yolov5s-train", "ultralytics-train", "resnet-sd", "resnet-nested", "mmlab-style", "dtypes",
                      "sd-proto2", "sd-proto4", "sd-proto5", "sd-legacy", "quantized", "yolov5s-nc3-init"])
    func stateDictViewMatchesTorchFacts(name: String) throws {
        let facts = try JSONSerialization.jsonObject(
            with: Data(contentsOf: URL(fileURLWithPath: Oracle.fixture("\(name).facts.json")))) as? [String: Any]
        let expected = try #require(facts?["state_dicts"] as? [String: [[String: Any]]])
        let ckpt = try Checkpoint(path: Oracle.fixture("\(name).pt"))
        for (record, list) in expected {
            let listing = try KeysBuilder(checkpoint: ckpt, record: record.isEmpty ? nil : record).build()
            #expect(listing.tensors.map(\.name) == list.map { $0["name"] as! String }, "\(name) \(record)")
            #expect(listing.tensors.map(\.tensor.dtype.rawValue) == list.map { $0["dtype"] as! String })
            #expect(listing.tensors.map { $0.tensor.shape.map(Int.init) } == list.map { $0["shape"] as! [Int] })
        }
    }

    private func tensor(shape: [Int64], stride: [Int64], offset: Int64 = 0, storageNumel: Int64 = 12,
                        dtype: DType = .float32) -> TensorRef {
        TensorRef(node: NodeID(0), tensorNode: NodeID(0), storageNode: NodeID(0),
                  storage: StorageRef(key: "0", storageClass: "torch.FloatStorage", dtype: dtype, location: "cpu",
                                      numel: storageNumel),
                  dtype: dtype, storageOffset: offset, shape: shape, stride: stride, requiresGrad: false,
                  isParameter: false)
    }

    @Test func contiguousAndViewsPass() throws {
        try tensor(shape: [3, 4], stride: [4, 1]).check(name: "a", recordBytes: 48)
        try tensor(shape: [4, 3], stride: [1, 4]).check(name: "transposed", recordBytes: 48)
        try tensor(shape: [2], stride: [1], offset: 10).check(name: "tail", recordBytes: 48)
        try tensor(shape: [0, 5], stride: [5, 1], offset: 12).check(name: "empty at end", recordBytes: 48)
        try tensor(shape: [], stride: []).check(name: "scalar", recordBytes: 48)
        try tensor(shape: [3, 4], stride: [0, 1]).check(name: "expanded", recordBytes: 48)
    }

    @Test(arguments: [
        ([3, 4] as [Int64], [4] as [Int64], Int64(0), "strides"),
        ([3, 4], [4, -1], 0, "negative stride"),
        ([-3, 4], [4, 1], 0, "negative size"),
        ([3, 4], [4, 1], -1, "negative storage offset"),
        ([3, 5], [4, 1], 0, "reaches"),
        ([2], [1], 11, "reaches"),
        ([Int64.max / 2, 4], [4, 1], 0, "overflows"),
        ([3, 4], [Int64.max / 2, 1], 0, "overflows"),
    ])
    func badTensorsFailNamingTheTensor(shape: [Int64], stride: [Int64], offset: Int64, phrase: String) {
        let t = tensor(shape: shape, stride: stride, offset: offset)
        do {
            try t.check(name: "model.0.weight", recordBytes: 48)
            Issue.record("accepted shape \(shape) stride \(stride)")
        } catch {
            #expect(error.description.hasPrefix("tensor model.0.weight: "))
            #expect(error.description.contains(phrase), "\(error.description)")
        }
    }

    @Test func recordLengthMustBeNumelTimesElementSize() {
        #expect(throws: TensorCheckError.self) { try tensor(shape: [3], stride: [1]).check(name: "x", recordBytes: 47) }
    }
}
