import Foundation
import Testing
@testable import CkptCore

/// `torch.distributed.checkpoint` folders (Formats/DCP.swift): the `.metadata` interpretation against torch's own
/// unpickling of it, the nesting through `planner_data` against torch's `set_element`, windowed zip reads, and the
/// refusals. The tensors themselves are checked against `dcp_to_torch_save` by Tests/interop/test_dcp.py and
/// test_distributed.py.
@Suite struct DCPTests {
    static let folders = ["dcp-fsdp2-ws2", "dcp-fsdp2-bf16-ws4", "dcp-dtensor-ws2", "dcp-safetensors-ws2",
                          "dcp-threads-ws2", "dcp-multifile-ws2"]

    static func metadata(_ folder: String) throws -> DCPMetadata {
        let path = Oracle.fixture("distributed/\(folder)/.metadata")
        return try DCPReader.readMetadata(path, name: ".metadata", limits: PickleLimits()).meta
    }

    /// What torch's `pickle.load` of `.metadata` holds, as JSON: the items in order (dtype, size, chunks), the
    /// planner_data paths (ints as `{"i": n}`), every storage entry.
    static let torchReading = """
        import json, pickle, sys, torch
        from torch.distributed.checkpoint.metadata import TensorStorageMetadata
        md = pickle.load(open(sys.argv[1], "rb"))
        items = []
        for fqn, m in md.state_dict_metadata.items():
            if isinstance(m, TensorStorageMetadata):
                items.append([fqn, str(m.properties.dtype).replace("torch.", ""), list(m.size),
                              [[list(c.offsets), list(c.sizes)] for c in m.chunks]])
            else:
                items.append([fqn, "bytes"])
        planner = {k: [p if isinstance(p, str) else {"i": p} for p in v] for k, v in (md.planner_data or {}).items()}
        storage = sorted([i.fqn, None if i.offset is None else list(i.offset), s.relative_path, s.offset, s.length]
                         for i, s in md.storage_data.items())
        print(json.dumps({"items": items, "planner": planner, "storage": storage}))
        """

    @Test(arguments: folders)
    func metadataAsTorchReadsIt(folder: String) throws {
        let m = try Self.metadata(folder)
        let out = try Oracle.run(Self.torchReading, [Oracle.fixture("distributed/\(folder)/.metadata")])
        let torch = try JSONSerialization.jsonObject(with: out) as! [String: Any]
        let items = torch["items"] as! [[Any]]
        #expect(items.count == m.items.count)
        for (want, got) in zip(items, m.items) {
            #expect(want[0] as! String == got.fqn)
            switch got.item {
            case .bytes:
                #expect(want[1] as! String == "bytes")
            case .tensor(let dtype, let size, let chunks):
                #expect(want[1] as! String == dtype.rawValue)
                #expect((want[2] as! [Int]).map(Int64.init) == size)
                let wc = (want[3] as! [[[Int]]]).map { ($0[0].map(Int64.init), $0[1].map(Int64.init)) }
                #expect(wc.count == chunks.count)
                for (a, b) in zip(wc, chunks) { #expect(a.0 == b.offsets && a.1 == b.sizes) }
            }
        }
        let planner = torch["planner"] as! [String: [Any]]
        #expect(planner.count == (m.planner?.count ?? 0))
        for (fqn, path) in planner {
            let want: [StateDictGraph.PathKey] = path.map { p in
                if let s = p as? String { return .key(s) }
                return .index((p as! [String: Int])["i"]!)
            }
            #expect(m.planner?[fqn] == want, "\(fqn)")
        }
        let storage = torch["storage"] as! [[Any]]
        #expect(storage.count == m.storage.count)
        for s in storage {
            let key = DCPMetadata.StorageKey(fqn: s[0] as! String, offsets: (s[1] as? [Int])?.map(Int64.init))
            let got = try #require(m.storage[key], "\(key)")
            #expect(got.relativePath == s[2] as! String)
            #expect(got.offset == UInt64(s[3] as! Int) && got.length == UInt64(s[4] as! Int))
        }
    }

    /// Paths as torch's `set_element` (torch/distributed/checkpoint/_traverse.py) applies them to `{}`: str elements
    /// make dicts, int elements lists (extended with None into which later items go).
    @Test func nestingAsSetElement() throws {
        let paths: [[StateDictGraph.PathKey]] = [
            [.key("model"), .key("0.weight")], [.key("optim"), .key("param_groups"), .index(0), .key("lr")],
            [.key("optim"), .key("state"), .key("0"), .key("step")], [.key("l"), .index(2)],
            [.key("l"), .index(0), .key("k")], [.key("model"), .key("1.bias")], [.key("top")],
            [.key("optim"), .key("param_groups"), .index(1), .key("params")], [.key("l"), .index(1)],
        ]
        var b = StateDictGraph()
        for (i, p) in paths.enumerated() {
            let v = b.addInt(i)
            try b.set(p, v)
        }
        let g = b.finished(plainDict: true)
        let pyPaths = paths.map { "(" + $0.map { k in
            switch k {
            case .key(let s): "'\(s)'"
            case .index(let i): String(i)
            }
        }.joined(separator: ", ") + ",)" }
        let code = """
            from torch.distributed.checkpoint._traverse import set_element
            d = {}
            for i, p in enumerate([\(pyPaths.joined(separator: ", "))]):
                set_element(d, p, i)
            print(repr(d), end="")
            """
        let want = String(decoding: try Oracle.run(code), as: UTF8.self)
        #expect(DCPNames.repr(g, g.root) == want)
    }

    @Test func nestingRefusesWhatTorchCannotBuild() throws {
        var b = StateDictGraph()
        let v = b.addInt(1)
        try b.set([.key("a")], v)
        #expect(throws: CheckpointError.self) { try b.set([.key("a"), .key("x")], v) }  // through a value
        try b.set([.key("l"), .index(0)], v)
        #expect(throws: CheckpointError.self) { try b.set([.key("l"), .key("x")], v) }  // a str key on a list
        // Two items at one place (a crafted planner_data; torch's set_element keeps the last, losing the first).
        #expect(throws: CheckpointError.self) { try b.set([.key("a")], v) }
        #expect(throws: CheckpointError.self) { try b.set([.key("l"), .index(0)], v) }
        try b.set([.key("l"), .index(2)], v)
        try b.set([.key("l"), .index(1)], v)  // the None the list was extended with takes a value
        // A dict made on the way, then an item at its place (a path through what becomes a tensor).
        try b.set([.key("m"), .key("x")], v)
        #expect(throws: CheckpointError.self) { try b.set([.key("m")], v) }
    }

    /// A zip read from a window of a bigger file reads as the zip alone (a DCP item inside a .distcp).
    @Test func windowedZip() throws {
        let dir = try Oracle.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let folder = Oracle.fixture("distributed/dcp-dtensor-ws2")
        let m = try Self.metadata("dcp-dtensor-ws2")
        let (key, s) = try #require(m.storage.first { $0.key.offsets != nil })
        let whole = try Data(contentsOf: URL(fileURLWithPath: folder + "/" + s.relativePath))
        let item = whole[Int(s.offset)..<Int(s.offset + s.length)]
        let alone = dir.appendingPathComponent("item.pt").path
        FileManager.default.createFile(atPath: alone, contents: Data(item))
        let a = try ZipReader(path: alone)
        let w = try ZipReader(path: folder + "/" + s.relativePath, window: s.offset..<(s.offset + s.length))
        #expect(a.entries.map(\.name) == w.entries.map(\.name), "\(key)")
        for e in a.entries {
            #expect(try a.readAll(e, limit: 1 << 20) == w.readAll(w.entries[e.index], limit: 1 << 20))
            #expect(try a.dataOffset(of: e) == w.dataOffset(of: w.entries[e.index]))
        }
    }

    /// A copy of a fixture folder whose `.metadata` is the fixture's graph changed by `edit`.
    static func edited(_ folder: String, in dir: URL, _ edit: (inout PickleGraph) throws -> Void) throws -> String {
        let copy = dir.appendingPathComponent(folder).path
        try FileManager.default.copyItem(atPath: Oracle.fixture("distributed/\(folder)"), toPath: copy)
        let bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: copy + "/.metadata")))
        var g = try PickleDecoder.decode(bytes)
        try edit(&g)
        try Data(PickleEncoder.encode(g)).write(to: URL(fileURLWithPath: copy + "/.metadata"))
        return copy
    }

    static func refusal(_ path: String) -> String {
        do {
            _ = try Checkpoint(path: path)
            return ""
        } catch {
            return error.description
        }
    }

    @Test func refusesStreamTransforms() throws {
        let dir = try Oracle.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = try Self.edited("dcp-dtensor-ws2", in: dir) { g in
            // The first _StorageInfo gets transform_descriptors=['stream.zstd/1'], as _extensions=[ZStandard()] writes.
            let i = try #require(g.nodes.indices.first { i in
                if case .object(let o) = g.nodes[i], g.globalName(o.callable) == "torch.distributed.checkpoint.filesystem._StorageInfo" {
                    return true
                }
                return false
            })
            guard case .object(let o) = g.nodes[i], let state = o.state, case .dict(var entries) = g[state] else {
                throw Oracle.Failure(description: "no state")
            }
            let list = g.add(.list([g.add(.string("stream.zstd/1"))]))
            entries.append(DictEntry(key: g.add(.string("transform_descriptors")), value: list))
            g[state] = .dict(entries)
        }
        let e = Self.refusal(path)
        #expect(e.contains("zstd") && e.contains(".distcp"), "\(e)")
    }

    @Test func refusesGlobalsOutsideTheMetadataClasses() throws {
        let dir = try Oracle.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = try Self.edited("dcp-dtensor-ws2", in: dir) { g in
            // Metadata.version becomes a call of os.system: refused by name, never run.
            let call = g.add(.object(PickleObject(construction: .reduce, callable: g.add(.global(module: "os", name: "system")),
                                                  args: g.add(.tuple([g.add(.string("true"))])))))
            guard case .object(let o) = g[g.root], let state = o.state, case .dict(var entries) = g[state] else {
                throw Oracle.Failure(description: "no state")
            }
            let v = try #require(entries.firstIndex { g.string($0.key) == "version" })
            entries[v].value = call
            g[state] = .dict(entries)
        }
        let e = Self.refusal(path)
        #expect(e.contains("os.system"), "\(e)")
        let scan = try ScanBuilder(path: path).build()
        #expect(scan.isDangerous && scan.dangerous.map(\.name).contains("os.system"))
    }

    /// A field the metadata classes do not have could change what an item means: refused by name.
    @Test func refusesUnknownFields() throws {
        let dir = try Oracle.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = try Self.edited("dcp-dtensor-ws2", in: dir) { g in
            let i = try #require(g.nodes.indices.first { i in
                if case .object(let o) = g.nodes[i], g.globalName(o.callable) == DCPMetadata.module + ".ChunkStorageMetadata" {
                    return true
                }
                return false
            })
            guard case .object(let o) = g.nodes[i], let state = o.state, case .dict(var entries) = g[state] else {
                throw Oracle.Failure(description: "no state")
            }
            entries.append(DictEntry(key: g.add(.string("stride_hint")), value: g.add(.int(1))))
            g[state] = .dict(entries)
        }
        let e = Self.refusal(path)
        #expect(e.contains("ChunkStorageMetadata") && e.contains("stride_hint"), "\(e)")
    }

    /// A chunk whose stored dtype disagrees with `.metadata`: the folder opens (the metadata is consistent), and
    /// reading the tensor, or preparing to write it, refuses it naming the file and the tensor.
    @Test func refusesAChunkOfAnotherDType() throws {
        let dir = try Oracle.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        var changed = ""
        let path = try Self.edited("dcp-dtensor-ws2", in: dir) { g in
            // The first tensor's TensorProperties: dtype float32 -> int32 (same item size).
            guard case .object(let root) = g[g.root], let rs = root.state, let top = g.dictEntries(rs),
                  let sdm = top.first(where: { g.string($0.key) == "state_dict_metadata" }).flatMap({ g.dictEntries($0.value) })
            else { throw Oracle.Failure(description: "no state_dict_metadata") }
            for e in sdm {
                guard case .object(let t) = g[e.value], let ts = t.state, let fields = g.dictEntries(ts),
                      let p = fields.first(where: { g.string($0.key) == "properties" })?.value,
                      case .object(let props) = g[p], let state = props.state, var tuple = g.sequence(state),
                      g.globalName(tuple[0]) == "torch.float32" else { continue }
                tuple[0] = g.add(.global(module: "torch", name: "int32"))
                g[state] = .tuple(tuple)
                changed = g.string(e.key)!
                return
            }
            throw Oracle.Failure(description: "no float32 tensor")
        }
        let c = try Checkpoint(path: path)
        do {
            try c.source.prepare(nil)
            Issue.record("prepare accepted a chunk of another dtype")
        } catch {
            let text = Checkpoint.sourceFault(error).description
            #expect(text.contains(changed) && text.contains(".distcp") && text.contains("float32"), "\(text)")
        }
    }

    /// A folder of `__R.metadata` files (use_collectives=False) is recognised; plain folders and Hugging Face model
    /// folders are not claimed.
    @Test func recognisesOnlyDCPFolders() throws {
        let dir = try Oracle.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        #expect(DCPReader.metadataFiles(folder: dir.path) == nil)
        #expect(DCPHuggingFace.shards(folder: dir.path) == nil)
        for n in ["__1.metadata", "__0.metadata", "__10.metadata"] {
            FileManager.default.createFile(atPath: dir.appendingPathComponent(n).path, contents: Data())
        }
        #expect(DCPReader.metadataFiles(folder: dir.path) == ["__0.metadata", "__1.metadata", "__10.metadata"])
        #expect(DCPHuggingFace.isShardName("shard-00001-model-00001-of-00001.safetensors"))
        #expect(!DCPHuggingFace.isShardName("model-00001-of-00002.safetensors"))
        #expect(!DCPHuggingFace.isShardName("shard-1-model-x-of-1.safetensors"))
    }
}

extension StateDictGraph {
    /// An int node (for tests).
    mutating func addInt(_ v: Int) -> NodeID { importingLeaf(.int(Int64(v))) }

    private mutating func importingLeaf(_ node: PickleNode) -> NodeID {
        var other = PickleGraph()
        other.root = other.add(node)
        var memo: [NodeID: NodeID] = [:]
        return importing(other.root, from: other, memo: &memo)
    }
}
