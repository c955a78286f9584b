import Foundation
import Testing
@testable import CkptCore

/// `--max-shard-size`: the size parser and the split, against huggingface_hub 2.4.0 (`parse_size_to_int`,
/// `split_state_dict_into_shards_factory`, huggingface_hub/serialization/_base.py). The folders written are compared
/// with `save_torch_state_dict`'s in Tests/interop/test_consolidate.py.
@Suite struct ShardsTests {
    /// Values printed by huggingface_hub 2.4.0's `parse_size_to_int` (a plain number is bytes, as its int argument).
    @Test func sizesAsHuggingFaceHubParsesThem() throws {
        let table: [(String, Int64)] = [
            ("5GB", 5_000_000_000), ("500MB", 500_000_000), ("2KB", 2000), ("2kb", 2000), (" 3 MB ", 3_000_000),
            ("1.5KB", 1500), ("0.0021MB", 2100), ("1e1KB", 10000), ("1TB", 1_000_000_000_000), ("4.9999KB", 4999),
            (".5KB", 500), ("1.1GB", 1_100_000_000), ("0.3MB", 300_000), ("7.7KB", 7700), ("12345", 12345), ("0", 0),
        ]
        for (text, bytes) in table { #expect(try ShardSize.parse(text) == bytes, "\(text)") }
        for text in ["5GiB", "5B", "KB", "abcKB", "-1KB", "nanKB", "infKB", "1_0KB", "5 G", "", "0x10KB", "99999999999TB"] {
            #expect(throws: CheckpointError.self, "\(text)") { try ShardSize.parse(text) }
        }
    }

    /// The same strings, asked of the installed huggingface_hub.
    @Test func sizesAgainstTheInstalledHub() throws {
        let texts = ["5GB", "0.3MB", "1.1GB", "2.675KB", "3.3333MB", "0.1KB", "10.01GB", "4.35TB", "1e-3GB", "7 kb"]
        let out = try Oracle.run("""
            import sys, json
            from huggingface_hub.serialization._base import parse_size_to_int
            print(json.dumps([parse_size_to_int(s) for s in sys.argv[1:]]))
            """, texts)
        let want = try JSONSerialization.jsonObject(with: out) as! [NSNumber]
        #expect(want.count == texts.count)
        for (text, w) in zip(texts, want) { #expect(try ShardSize.parse(text) == w.int64Value, "\(text)") }
    }

    /// Splits printed by huggingface_hub 2.4.0 for these entries: its docstring's example ([6, 6, 2, 6, 2, 2] in 10),
    /// a tensor larger than the limit (its shard comes first), a tensor of no bytes, storages shared by several
    /// (grouped into the first's shard, counted once), a limit of 0.
    @Test func splitsAsTheReference() {
        func e(_ name: String, _ size: Int64, _ storage: String? = nil) -> ShardEntry {
            ShardEntry(name: name, size: size, storage: storage)
        }
        let cases: [([ShardEntry], Int64, [[String]], Int64)] = [
            ([e("a", 6), e("b", 6), e("c", 2), e("d", 6), e("e", 2), e("f", 2)], 10, [["a"], ["b", "c"], ["d", "e", "f"]], 24),
            ([e("a", 1), e("b", 1), e("big", 10), e("d", 1)], 5, [["big"], ["a", "b", "d"]], 13),
            ([e("a", 3), e("b", 3), e("c", 0), e("d", 4)], 6, [["a", "b", "c"], ["d"]], 10),
            ([e("a", 3), e("e1", 0, "z"), e("b", 5), e("e2", 0, "z"), e("c", 2), e("e3", 0, "z")], 5,
             [["a", "e1", "e2", "e3"], ["b"], ["c"]], 10),
            ([e("a", 3), e("b", 2), e("c", 1)], 0, [["a"], ["b"], ["c"]], 6),
            ([e("t1", 4, "s"), e("x", 3), e("t2", 4, "s"), e("y", 3)], 7, [["t1", "x", "t2"], ["y"]], 10),
        ]
        for (entries, limit, shards, total) in cases {
            let s = ShardSplit.split(entries, maxShardSize: limit)
            #expect(s.shards == shards && s.totalSize == total, "\(entries.map(\.name)) in \(limit)")
        }
        #expect(ShardSplit(shards: [["a"]], totalSize: 1).fileNames == ["model.safetensors"])
        #expect(ShardSplit(shards: [["a"], ["b"]], totalSize: 2).fileNames
                == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"])
    }

    /// Random state dicts (sizes, shared storages, limits) split by the installed huggingface_hub and by ckpt.
    @Test func randomSplitsAgainstTheInstalledHub() throws {
        var rng = SystemRandomNumberGenerator()
        var cases: [[String: Any]] = []
        var ours: [ShardSplit] = []
        for _ in 0..<200 {
            let n = Int.random(in: 1...25, using: &rng)
            var entries: [ShardEntry] = []
            for i in 0..<n {
                let shared = Int.random(in: 0..<5, using: &rng) == 0
                entries.append(ShardEntry(name: "t\(i)", size: Int64.random(in: 0...40, using: &rng),
                                          storage: shared ? "s\(Int.random(in: 0..<3, using: &rng))" : nil))
            }
            // tensors of one storage have one size, as storages do
            var sizes: [String: Int64] = [:]
            for i in entries.indices { if let s = entries[i].storage { entries[i].size = sizes[s] ?? entries[i].size; sizes[s] = entries[i].size } }
            let limit = Int64.random(in: 0...80, using: &rng)
            ours.append(ShardSplit.split(entries, maxShardSize: limit))
            cases.append(["limit": limit, "entries": entries.map { [$0.name, $0.size, $0.storage as Any? ?? NSNull()] }])
        }
        let input = String(decoding: try JSONSerialization.data(withJSONObject: cases), as: UTF8.self)
        let out = try Oracle.run("""
            import sys, json
            from huggingface_hub.serialization._base import split_state_dict_into_shards_factory as split
            res = []
            for c in json.loads(sys.argv[1]):
                sd = {e[0]: e for e in c["entries"]}
                r = split(sd, get_storage_size=lambda e: e[1], get_storage_id=lambda e: e[2],
                          filename_pattern="model{suffix}.safetensors", max_shard_size=c["limit"])
                res.append({"files": list(r.filename_to_tensors), "shards": list(r.filename_to_tensors.values()),
                            "total": r.metadata["total_size"]})
            print(json.dumps(res))
            """, [input])
        let want = try JSONSerialization.jsonObject(with: out) as! [[String: Any]]
        #expect(want.count == ours.count && ours.contains { $0.shards.count > 2 } && ours.contains { $0.shards.count == 1 })
        for (s, w) in zip(ours, want) {
            #expect(s.shards == (w["shards"] as! [[String]]))
            #expect(s.fileNames == (w["files"] as! [String]))
            #expect(s.totalSize == (w["total"] as! NSNumber).int64Value)
        }
    }

    /// The index's JSON as Python's `json.dump(indent=2)` (ensure_ascii) writes it.
    @Test func indexJSONAsPythonDumpsIt() throws {
        let value = JSONValue.object([
            ("metadata", .object([("total_size", .int(123)), ("é\"\\\n\u{7F}😀", .string("x"))])),
            ("weight_map", .object([("a.b", .string("model-00001-of-00002.safetensors")), ("名", .string("f"))])),
            ("empty", .object([])),
        ])
        let out = try Oracle.run("""
            import json, sys
            obj = {"metadata": {"total_size": 123, "é\\"\\\\\\n\\x7f😀": "x"},
                   "weight_map": {"a.b": "model-00001-of-00002.safetensors", "名": "f"}, "empty": {}}
            sys.stdout.write(json.dumps(obj, indent=2))
            """)
        #expect(PythonJSON.dump(value) == String(decoding: out, as: UTF8.self))
    }
}
