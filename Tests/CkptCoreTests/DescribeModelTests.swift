import Foundation
import Testing
@testable import CkptCore

/// The model's description that `--state-dict` keeps (issue 14, point 3): torch says which attributes are its own
/// bookkeeping and what a tensor's `tolist()` is; the interop test rebuilds the models from the output.
@Suite struct DescribeModelTests {
    /// What torch says of a fixture's weights module: its attributes that a bare `nn.Module` does not have, in order,
    /// and its `stride` as `tolist()` gives it.
    struct TorchFacts: Decodable {
        var attributes: [String]
        var bookkeeping: [String]
        var stride: [Double]
    }

    static func facts(_ fixture: String, record: String) throws -> TorchFacts {
        let code = """
        import json, sys, torch, torch.nn as nn
        sys.path.insert(0, 'scripts/fixturelib')
        m = torch.load(sys.argv[1], weights_only=False)[sys.argv[2]]
        own = set(vars(nn.Module()))
        print(json.dumps({"attributes": [k for k in vars(m) if k not in own], "bookkeeping": sorted(own),
                          "stride": m.stride.tolist()}))
        """
        return try JSONDecoder().decode(TorchFacts.self, from: Oracle.run(code, [Oracle.fixture(fixture), record]))
    }

    static func description(_ plan: SurgeryPlan) -> [(String, NodeID)]? {
        let g = plan.graph
        return g.lookup(g.root, DescribeModel.recordName).flatMap(g.dictEntries)?.compactMap { e in
            g.keyText(e.key).map { ($0, e.value) }
        }
    }

    @Test(arguments: [("yolov5s-train.pt", "model"), ("ultralytics-train.pt", "ema")])
    func descriptionIsTheModulesOwnAttributes(fixture: String, record: String) throws {
        let torch = try Self.facts(fixture, record: record)
        let ckpt = try Checkpoint(path: Oracle.fixture(fixture))
        var o = StripOptions()
        o.stateDict = true
        let plan = try ckpt.planStrip(o)
        let d = try #require(Self.description(plan))
        #expect(d.map(\.0) == torch.attributes)
        let stride = try #require(d.first { $0.0 == "stride" }?.1)
        let numbers = plan.graph.sequence(stride)?.compactMap { id -> Double? in
            if case .float(let v) = plan.graph[id] { return v } else { return nil }
        }
        #expect(numbers == torch.stride)
        #expect(plan.report.recordChanges.contains { $0.record == DescribeModel.recordName && $0.before == "(new)" })
        // the rest of the file is as it was: the new record is the last one
        #expect(plan.graph.recordsOf(plan.graph.root).last?.name == DescribeModel.recordName)
        #expect(plan.graph.recordsOf(plan.graph.root).dropLast().map(\.name) == ckpt.records.map(\.name))

        o.stateDict = false
        #expect(Self.description(try ckpt.planStrip(o)) == nil)

        for key in torch.bookkeeping { #expect(DescribeModel.isTorchBookkeeping(key), "\(key)") }
        for key in torch.attributes { #expect(!DescribeModel.isTorchBookkeeping(key), "\(key)") }
    }

    /// Each dtype's element as the Python number `tensor.tolist()` gives, from the bytes torch stores.
    @Test func numbersAreWhatTolistGives() throws {
        struct Case: Decodable { var dtype: String; var hex: String; var values: [Double]; var isBool: Bool }
        let code = """
        import json, torch
        out = []
        for name in ["float16", "bfloat16", "float32", "float64", "uint8", "int8", "int16", "uint16", "int32", "uint32",
                     "int64", "bool"]:
            dt = getattr(torch, name)
            if dt is torch.bool:
                t = torch.tensor([True, False, True])
            elif dt.is_floating_point:
                t = torch.tensor([0.1, -2.5, 65504.0, 1e-7, 3.0e38 if dt in (torch.float32, torch.float64, torch.bfloat16) else 1.0]).to(dt)
            else:
                info = torch.iinfo(dt)
                t = torch.tensor([info.min, info.max, 0, 7], dtype=dt)
            out.append({"dtype": name, "hex": bytes(t.untyped_storage()).hex(), "values": [float(v) for v in t.tolist()],
                        "isBool": dt is torch.bool})
        print(json.dumps(out))
        """
        let cases = try JSONDecoder().decode([Case].self, from: Oracle.run(code))
        #expect(cases.count == 12)
        for c in cases {
            let dtype = try #require(DType(rawValue: c.dtype))
            var bytes: [UInt8] = []
            var i = c.hex.startIndex
            while i < c.hex.endIndex {
                let j = c.hex.index(i, offsetBy: 2)
                bytes.append(UInt8(c.hex[i..<j], radix: 16)!)
                i = j
            }
            let got = (0..<c.values.count).map { DescribeModel.pythonNumber(dtype, bytes, at: $0 * dtype.itemSize) }
            for (g, want) in zip(got, c.values) {
                switch g {
                case .float(let v): #expect(v == want && dtype.isFloatingPoint, "\(c.dtype)")
                case .int(let v): #expect(Double(v) == want && !dtype.isFloatingPoint && !c.isBool, "\(c.dtype)")
                case .bool(let v): #expect((v ? 1.0 : 0.0) == want && c.isBool, "\(c.dtype)")
                default: Issue.record("\(c.dtype): \(String(describing: g))")
                }
            }
        }
        #expect(DescribeModel.pythonNumber(.complex64, [UInt8](repeating: 0, count: 8), at: 0) == nil)
        #expect(DescribeModel.pythonNumber(.uint64, [UInt8](repeating: 0xFF, count: 8), at: 0) == nil)
    }
}
