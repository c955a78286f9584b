import Foundation
import Testing
@testable import CkptCore

/// The records `convert` carries in safetensors `__metadata__` (``CarriedRecords``, ``PlainJSON``), against Python's
/// own json and pickle.
@Suite struct ConvertRecordsTests {
    /// Python values, each pickled (protocol 2) and as `json.dumps` writes it; "-" when json.dumps refuses it.
    static let values = [
        "5", "-2**70", "2**80", "1e-05", "5e-324", "3.0", "-0.0", "True", "None", "'é 名前 \"q\"\\n\\x01'",
        "[1, (2.5, 'a'), [], {}]", "{'yaml': {'nc': 2}, 'names': {0: 'cat', 1: 'dog'}, 'stride': (8, 16)}",
        "collections.OrderedDict([('lr', 0.1), ('betas', (0.9, 0.999))])",
        "float('nan')", "float('inf')", "b'x'", "{1, 2}", "pathlib.PurePosixPath('a/b')", "{(1, 2): 3}", "{1.5: 2}",
    ]

    @Test func plainValuesAreJSONAsPythonWritesThem() throws {
        let code = """
        import sys, json, pickle, base64, collections, pathlib
        for src in sys.argv[1:]:
            v = eval(src)
            try: text = json.dumps(v, allow_nan=False)
            except (TypeError, ValueError): text = "-"
            print(base64.b64encode(pickle.dumps(v, protocol=2)).decode(), base64.b64encode(text.encode()).decode())
        """
        let lines = String(decoding: try Oracle.run(code, Self.values), as: UTF8.self).split(separator: "\n")
        #expect(lines.count == Self.values.count)
        for (src, line) in zip(Self.values, lines) {
            let parts = line.split(separator: " ").map { Array(Data(base64Encoded: String($0))!) }
            let g = try PickleDecoder.decode(parts[0])
            let python = String(decoding: parts[1], as: UTF8.self)
            let ours = try? PlainJSON.encode(g, g.root, path: "r").0
            if src == "{1.5: 2}" {
                #expect(ours == nil, "json.dumps writes a float key as a str; ckpt carries only str and int keys (README)")
            } else if python == "-" {
                #expect(ours == nil, "\(src): json.dumps refuses it, ckpt must not carry it")
            } else {
                #expect(ours == (try JSONParser.parse(Array(python.utf8))), "\(src)")
            }
        }
    }

    @Test func restoredValuesUnpickleAsJSONLoadsGivesThem() throws {
        let carried = Self.values.prefix(13)
        var texts: [String] = []
        for src in carried {
            let code = "import sys, json, pickle, collections; print(json.dumps(eval(sys.argv[1])))"
            let text = String(decoding: try Oracle.run(code, [src]), as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
            var g = PickleGraph()
            g.root = PlainJSON.node(try JSONParser.parse(Array(text.utf8)), into: &g)
            texts.append(Data(try PickleEncoder.encode(g)).base64EncodedString())
            texts.append(text)
        }
        let check = """
        import sys, json, pickle, base64
        a = sys.argv[1:]
        for i in range(0, len(a), 2):
            assert pickle.loads(base64.b64decode(a[i])) == json.loads(a[i + 1]), a[i + 1]
        print("ok")
        """
        #expect(String(decoding: try Oracle.run(check, texts), as: UTF8.self) == "ok\n")
    }

    @Test(arguments: [
        [("ckpt.records", "[1]"), ("ckpt.weights", "model")],
        [("ckpt.records", #"["a","model"]"#)],
        [("ckpt.records", #"["a","a","model"]"#), ("ckpt.weights", "model"), ("a", "1")],
        [("ckpt.records", #"["a"]"#), ("ckpt.weights", "model"), ("a", "1")],
        [("ckpt.records", #"["a","model"]"#), ("ckpt.weights", "model")],
        [("ckpt.records", #"["a","model"]"#), ("ckpt.weights", "model"), ("a", "{")],
    ])
    func malformedRecordEntriesAreRefused(_ entries: [(String, String)]) {
        #expect(throws: CheckpointError.self) { try CarriedRecords.read(metadata: [("format", "pt")] + entries) }
    }

    @Test func metadataWithoutRecordEntriesHasNone() throws {
        #expect(try CarriedRecords.read(metadata: [("format", "pt"), ("epoch", "5"), ("lm_head.weight", "embed.weight")]) == nil)
        let r = try #require(try CarriedRecords.read(metadata: [("ckpt.records", #"["epoch","model","date"]"#),
                                                                ("ckpt.weights", "model"), ("epoch", "5"), ("date", #""d""#)]))
        #expect(r.order == ["epoch", "model", "date"] && r.records.map(\.name) == ["epoch", "date"])
    }

    @Test func aRecordNamedLikeAnAliasOrFormatIsNotCarried() {
        var r = CarriedRecords(weights: "model", records: [("epoch", .int(1)), ("format", .string("x")), ("w", .null)],
                               weightsIndex: 2, leftOut: [], lossy: [])
        let entries = r.metadataEntries(after: [("format", "pt"), ("w", "v")])
        #expect(entries.map(\.key) == ["epoch", "ckpt.records", "ckpt.weights"])
        #expect(entries[1].value == #"["epoch","model"]"#)
        #expect(r.leftOut.map(\.name) == ["format", "w"])
    }
}
