import Foundation
import Testing
@testable import CkptCore

/// The format adapters' building blocks, against torch and Python's json where there is a reference.
@Suite struct FormatsTests {
    // MARK: - The graph a state dict presents

    @Test func synthesizedStateDictPicklesAsTorchSaveDoes() throws {
        // torch.save of an OrderedDict of contiguous tensors; ckpt builds the same dict from names, dtypes, shapes.
        let specs: [(String, DType, [Int64])] = [
            ("a.weight", .float32, [2, 3]), ("b", .uint16, [3]), ("c", .float8_e4m3fn, []), ("d", .bfloat16, [0]),
            ("e", .int64, [1, 1, 4]), ("f", .bool, [2]), ("g", .uint64, [2, 0, 3]), ("h", .complex64, [1]),
            ("unicodé", .float16, [300]),
        ]
        let code = """
        import torch, collections, sys, io, zipfile, base64
        sd = collections.OrderedDict()
        for spec in sys.argv[1:]:
            name, dtype, shape = spec.split("|")
            shape = [int(s) for s in shape.split(",") if s]
            sd[name] = torch.zeros(shape, dtype=getattr(torch, dtype))
        buf = io.BytesIO(); torch.save(sd, buf)
        print(base64.b64encode(zipfile.ZipFile(buf).read("archive/data.pkl")).decode())
        """
        let args = specs.map { "\($0.0)|\($0.1.rawValue)|\($0.2.map(String.init).joined(separator: ","))" }
        let torchPickle = Array(Data(base64Encoded: String(decoding: try Oracle.run(code, args), as: UTF8.self)
            .trimmingCharacters(in: .whitespacesAndNewlines))!)
        var g = StateDictGraph()
        for (i, s) in specs.enumerated() { g.append(name: s.0, dtype: s.1, shape: s.2, storageKey: String(i)) }
        #expect(try PickleEncoder.encode(g.finished()) == torchPickle)
    }

    // MARK: - JSON

    @Test func jsonParserAgreesWithPython() throws {
        let docs = [
            #"{"a": [1, -2, 3.5, 1e3, -0.0, true, false, null], "b": {"c": "d"}}"#,
            #"{"esc": "q\"b\\s\/n\n t\t r\r b\b f\f u\u00e9 \ud83d\udc0d", "": ""}"#,
            #"  [ 18446744073709551615 , -9223372036854775808, 9223372036854775807 ]  "#,
            #"{"ünïcode": "名前"}"#,
        ]
        let code = """
        import json, sys
        for doc in sys.argv[1:]:
            print(json.dumps(json.loads(doc), ensure_ascii=False, separators=(",", ":")))
        """
        let python = String(decoding: try Oracle.run(code, docs), as: UTF8.self).split(separator: "\n").map(String.init)
        for (doc, want) in zip(docs, python) {
            let v = try JSONParser.parse(Array(doc.utf8))
            // Python writes -0.0 and 1000.0 as floats; compare through Python's own reading of ours.
            let ours = String(decoding: try Oracle.run("import json,sys; print(json.dumps(json.loads(sys.argv[1]), ensure_ascii=False, separators=(',', ':')))",
                                                       [v.compactSerdeText()]), as: UTF8.self)
            #expect(ours.trimmingCharacters(in: .newlines) == want, "\(doc)")
        }
    }

    @Test(arguments: [
        ("trailing-garbage", #"{"a": 1} x"#), ("duplicate-key", #"{"a": 1, "a": 2}"#), ("unterminated-string", #"{"a": "b"#),
        ("lone-surrogate", #""\ud800""#), ("leading-zero", "01"), ("control-character", "\"a\u{01}b\""),
        ("bad-literal", "tru"), ("empty", ""), ("missing-colon", #"{"a" 1}"#), ("bare-comma", "[1,]"),
        ("too-deep", String(repeating: "[", count: 100) + String(repeating: "]", count: 100)),
    ])
    func jsonParserRefuses(_ name: String, _ text: String) {
        #expect(throws: JSONParser.Failure.self, "\(name)") { try JSONParser.parse(Array(text.utf8)) }
    }

    // MARK: - renamedForComparison

    private func named(_ names: [String]) throws -> [NamedTensor] {
        let ckpt = try Checkpoint(path: Oracle.fixture("sd-proto2.pt"))
        let t = try ckpt.graph.stateDict(ckpt.graph.root)[0].tensor
        return names.map { NamedTensor(name: $0, tensor: t) }
    }

    @Test func renamedForComparisonPrefersTheLongestPrefix() throws {
        let tensors = try named(["fc.weight", "head.w", "other"])
        let (out, hits) = try renamedForComparison(tensors, map: [("", "model."), ("head.", "model.24."), ("nope.", "x.")])
        #expect(out.map(\.name) == ["model.fc.weight", "model.24.w", "model.other"])
        #expect(hits == [2, 1, 0])
        let (stripped, _) = try renamedForComparison(try named(["module.a", "b"]), map: [("module.", "")])
        #expect(stripped.map(\.name) == ["a", "b"])
    }

    @Test func renamedForComparisonRefusesACollision() throws {
        #expect(throws: CheckpointError.self) {
            try renamedForComparison(try named(["module.a", "a"]), map: [("module.", "")])
        }
    }

    // MARK: - safetensors, one test per defect

    /// A safetensors file from a header object and data bytes.
    private func safetensorsFile(_ header: String, data: [UInt8], lengthOverride: UInt64? = nil) throws -> String {
        let h = Array(header.utf8)
        let n = lengthOverride ?? UInt64(h.count)
        let bytes = (0..<8).map { UInt8(truncatingIfNeeded: n >> (8 * UInt64($0))) } + h + data
        let path = try Oracle.tempDir().appendingPathComponent("t.safetensors").path
        FileManager.default.createFile(atPath: path, contents: Data(bytes))
        return path
    }

    private func expectInvalid(_ header: String, data: [UInt8], lengthOverride: UInt64? = nil, _ fragment: String) throws {
        let path = try safetensorsFile(header, data: data, lengthOverride: lengthOverride)
        do {
            _ = try Checkpoint(path: path)
            Issue.record("opened a bad file: \(header)")
        } catch {
            guard case .invalidFile(let format, let why) = error else { Issue.record("wrong error \(error)"); return }
            #expect(format == "safetensors")
            #expect(why.contains(fragment), "\(why)")
        }
    }

    @Test func safetensorsWellFormedOpens() throws {
        let path = try safetensorsFile(#"{"__metadata__":{"format":"pt"},"b":{"dtype":"I16","shape":[2],"data_offsets":[4,8]},"a":{"dtype":"F32","shape":[],"data_offsets":[0,4]}}"#,
                                       data: [0, 0, 128, 63, 1, 0, 2, 0])
        let c = try Checkpoint(path: path)
        #expect(c.format == "safetensors")
        #expect(try KeysBuilder(checkpoint: c).build().tensors.map(\.name) == ["a", "b"])  // file order, as load_file
        #expect(c.metadata.map(\.key) == ["format"])
    }

    @Test func safetensorsHeaderLongerThanTheLimit() throws {
        try expectInvalid("{}", data: [], lengthOverride: Safetensors.maxHeaderBytes + 1, "limit")
    }

    @Test func safetensorsHeaderPastTheEndOfTheFile() throws {
        try expectInvalid("{}", data: [], lengthOverride: 64, "after its length")
    }

    @Test func safetensorsHeaderNotStartingWithABrace() throws {
        try expectInvalid(" {}", data: [], "does not start with '{'")
    }

    @Test func safetensorsMetadataValueNotAString() throws {
        try expectInvalid(#"{"__metadata__":{"a":1}}"#, data: [], "not a string")
    }

    @Test func safetensorsUnknownDType() throws {
        try expectInvalid(#"{"a":{"dtype":"F7","shape":[1],"data_offsets":[0,1]}}"#, data: [0], "F7")
    }

    @Test func safetensorsNegativeShape() throws {
        try expectInvalid(#"{"a":{"dtype":"U8","shape":[-1],"data_offsets":[0,1]}}"#, data: [0], "shape")
    }

    @Test func safetensorsShapeOverflows() throws {
        try expectInvalid(#"{"a":{"dtype":"F64","shape":[4294967296,4294967296],"data_offsets":[0,8]}}"#, data: [0], "overflow")
    }

    @Test func safetensorsSizeDisagreesWithOffsets() throws {
        try expectInvalid(#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}"#, data: [0, 0, 0, 0], "span 4")
    }

    @Test func safetensorsGapBetweenTensors() throws {
        try expectInvalid(#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"b":{"dtype":"U8","shape":[1],"data_offsets":[2,3]}}"#,
                          data: [0, 0, 0], "expected 1")
    }

    @Test func safetensorsOverlappingTensors() throws {
        try expectInvalid(#"{"a":{"dtype":"I16","shape":[1],"data_offsets":[0,2]},"b":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}"#,
                          data: [0, 0], "expected 2")
    }

    @Test func safetensorsTrailingBytes() throws {
        try expectInvalid(#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}"#, data: [0, 9], "follow the last tensor")
    }

    @Test func safetensorsCutShort() throws {
        try expectInvalid(#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#, data: [0, 0, 0], "cut short")
    }

    @Test func safetensorsDuplicateName() throws {
        try expectInvalid(#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}"#,
                          data: [0, 0], "duplicate key")
    }

    // MARK: - ONNX wire-level defects

    private func expectInvalidONNX(_ bytes: [UInt8], _ fragment: String) throws {
        let path = try Oracle.tempDir().appendingPathComponent("m.onnx").path
        FileManager.default.createFile(atPath: path, contents: Data(bytes))
        do {
            _ = try Checkpoint(path: path)
            Issue.record("opened a bad model")
        } catch {
            guard case .invalidFile(let format, let why) = error else { Issue.record("wrong error \(error)"); return }
            #expect(format == "onnx")
            #expect(why.contains(fragment), "\(why)")
        }
    }

    @Test func onnxFieldRunsPastTheEnd() throws {
        try expectInvalidONNX([0x08, 0x07, 0x3A, 0x7F, 0x00], "runs past the end")
    }

    @Test func onnxVarintTooLong() throws {
        try expectInvalidONNX([0x08] + [UInt8](repeating: 0xFF, count: 11), "longer than 10 bytes")
    }

    @Test func onnxGroupWireType() throws {
        try expectInvalidONNX([0x08, 0x07, 0x0B], "wire type 3")
    }

    @Test func onnxInitializerRawDataWithWrongWireType() throws {
        // graph (7) { initializer (5) { raw_data (9) as a varint } }
        try expectInvalidONNX([0x08, 0x07, 0x3A, 0x04, 0x2A, 0x02, 0x48, 0x01], "wire type 0")
    }

    @Test func onnxEmptyModelHasNoTensors() throws {
        let path = try Oracle.tempDir().appendingPathComponent("m.onnx").path
        FileManager.default.createFile(atPath: path, contents: Data([0x08, 0x07, 0x12, 0x01, 0x78]))
        let c = try Checkpoint(path: path)
        #expect(c.format == "onnx")
        #expect(try KeysBuilder(checkpoint: c).build().tensors.isEmpty)
        #expect(c.metadata.first { $0.key == "producer" }?.value == "x")
    }

    // MARK: - Container format names

    @Test func containerFormatOfShardsAndOfAFolderReadFromItsWeightsFile() throws {
        // safetensors' own save_file writes the shards and a model folder's weights file.
        let dir = try Oracle.tempDir()
        try Oracle.run("""
        import json, os, sys, torch
        from safetensors.torch import save_file
        d = sys.argv[1]
        save_file({"a": torch.zeros(2)}, os.path.join(d, "model-00001-of-00002.safetensors"))
        save_file({"b": torch.ones(3)}, os.path.join(d, "model-00002-of-00002.safetensors"))
        json.dump({"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors",
                                                  "b": "model-00002-of-00002.safetensors"}},
                  open(os.path.join(d, "model.safetensors.index.json"), "w"))
        os.mkdir(os.path.join(d, "folder"))
        save_file({"c": torch.ones(1)}, os.path.join(d, "folder", "model.safetensors"))
        """, [dir.path])
        let sharded = try Checkpoint(path: dir.appendingPathComponent("model.safetensors.index.json").path)
        #expect(sharded.containerFormat == .sharded(shardFormats: [.safetensors], shards: 2))
        #expect(sharded.format == "sharded safetensors (2 shards)")
        let folder = try Checkpoint(path: dir.appendingPathComponent("folder").path)
        #expect(folder.containerFormat == .safetensors)
        #expect(folder.format == "safetensors, from model.safetensors")
        #expect(ContainerFormat.index(over: [.torchZip, .safetensors, .torchZip], shards: 3).description
                == "sharded safetensors + torch zip (3 shards)")
    }
}
