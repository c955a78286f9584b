import Foundation
import Testing
@testable import CkptCore

/// Python 2 era pickles, written opcode by opcode as CPython 2.7's Lib/pickle.py writes them (see
/// scripts/make-legacy-fixtures.py, which builds the same constructs into whole checkpoints that torch 2.13 loads).
private enum Py2 {
    static func u(_ s: [UInt8]) -> [UInt8] { [0x55, UInt8(s.count)] + s }  // SHORT_BINSTRING
    static func u(_ s: String) -> [UInt8] { u(Array(s.utf8)) }
    static func global(_ m: String, _ n: String) -> [UInt8] { [0x63] + Array(m.utf8) + [0x0A] + Array(n.utf8) + [0x0A] }
    static let proto: [UInt8] = [0x80, 0x02], mark: [UInt8] = [0x28], emptyList: [UInt8] = [0x5D]
    static let appends: [UInt8] = [0x65], tuple1: [UInt8] = [0x85], tuple2: [UInt8] = [0x86], reduce: [UInt8] = [0x52]
    static let stop: [UInt8] = [0x2E], emptyDict: [UInt8] = [0x7D], setitem: [UInt8] = [0x73], build: [UInt8] = [0x62]
    static func int(_ v: UInt8) -> [UInt8] { [0x4B, v] }  // BININT1

    /// `[k, v]` as Python 2 pickles a 2-item list: EMPTY_LIST MARK k v APPENDS.
    static func pairList(_ k: [UInt8], _ v: [UInt8]) -> [UInt8] { emptyList + mark + k + v + appends }
    /// `(k, v)`: k v TUPLE2.
    static func pairTuple(_ k: [UInt8], _ v: [UInt8]) -> [UInt8] { k + v + tuple2 }
    /// `cls(items)` as REDUCE: GLOBAL, the list of pairs in a 1-tuple, REDUCE (Lib/collections.py
    /// OrderedDict.__reduce__ for an OrderedDict; `dict([...])` for a dict).
    static func called(_ m: String, _ n: String, _ pairs: [[UInt8]]) -> [UInt8] {
        global(m, n) + emptyList + mark + pairs.flatMap { $0 } + appends + tuple1 + reduce
    }
}

@Suite struct LegacyOldTorchTests {
    func decode(_ b: [UInt8]) throws -> PickleGraph { try PickleDecoder.decode(b) }

    func keysAndInts(_ g: PickleGraph) -> [(String, Int64)] {
        (g.dictEntries(g.root) ?? []).map { (g.string($0.key) ?? "?", g.int($0.value) ?? -1) }
    }

    /// What CPython's unpickler builds from the bytes, with torch.load's `encoding='utf-8'`: the dict's items.
    func cpython(_ b: [UInt8]) throws -> [[String: Int64]] {
        let code = "import pickle, sys, json, base64; d = pickle.loads(base64.b64decode(sys.argv[1]), encoding='utf-8'); "
            + "print(json.dumps([{k: v} for k, v in d.items()]))"
        let out = try Oracle.run(code, [Data(b).base64EncodedString()])
        return try JSONDecoder().decode([[String: Int64]].self, from: out)
    }

    func expectCPythonAgrees(_ b: [UInt8]) throws {
        let want = try cpython(b).map { ($0.keys.first!, $0.values.first!) }
        let got = keysAndInts(try decode(b))
        #expect(got.map(\.0) == want.map(\.0))
        #expect(got.map(\.1) == want.map(\.1))
    }

    @Test func orderedDictBuiltFromListOfLists() throws {
        let b = Py2.proto + Py2.called("collections", "OrderedDict",
            [Py2.pairList(Py2.u("b"), Py2.int(2)), Py2.pairList(Py2.u("a"), Py2.int(1))]) + Py2.stop
        try expectCPythonAgrees(b)
    }

    @Test func builtinDictFromTuplesThenSetItem() throws {
        // dict([("x", 1), ("y", 2)]) then SETITEM y=3, z=4: y keeps its place with the later value.
        let b = Py2.proto + Py2.called("__builtin__", "dict",
            [Py2.pairTuple(Py2.u("x"), Py2.int(1)), Py2.pairTuple(Py2.u("y"), Py2.int(2))])
            + Py2.u("y") + Py2.int(3) + Py2.setitem + Py2.u("z") + Py2.int(4) + Py2.setitem + Py2.stop
        try expectCPythonAgrees(b)
    }

    @Test func dictFromDictAndDefaultdictFactory() throws {
        let inner = Py2.emptyDict + Py2.u("k") + Py2.int(7) + Py2.setitem
        try expectCPythonAgrees(Py2.proto + Py2.global("collections", "OrderedDict") + inner + Py2.tuple1 + Py2.reduce + Py2.stop)
        let dd = Py2.proto + Py2.global("collections", "defaultdict") + Py2.global("__builtin__", "list")
            + Py2.emptyList + Py2.mark + Py2.pairTuple(Py2.u("q"), Py2.int(5)) + Py2.pairTuple(Py2.u("r"), Py2.int(6))
            + Py2.appends + Py2.tuple2 + Py2.reduce + Py2.stop
        try expectCPythonAgrees(dd)
    }

    @Test func constructorArgumentsNotUnderstoodAreReported() throws {
        // OrderedDict([("a", 1, 2)]): CPython raises; ckpt says what it cannot read.
        let bad = Py2.proto + Py2.global("collections", "OrderedDict") + Py2.emptyList + Py2.mark
            + Py2.u("a") + Py2.int(1) + Py2.int(2) + [0x87] + Py2.appends + Py2.tuple1 + Py2.reduce + Py2.stop
        let g = try decode(bad)
        #expect(g.dictConstructorProblem(g.root)?.contains("2-item") == true)
        let good = try decode(Py2.proto + Py2.called("collections", "OrderedDict", []) + Py2.stop)
        #expect(good.dictConstructorProblem(good.root) == nil)
    }

    @Test func settlingMovesEntriesToSetItemsAndRoundTrips() throws {
        // OrderedDict([["a", 1], ["b", 2]]) with BUILD {"_metadata": 9}.
        let b = Py2.proto + Py2.called("collections", "OrderedDict",
            [Py2.pairList(Py2.u("a"), Py2.int(1)), Py2.pairList(Py2.u("b"), Py2.int(2))])
            + Py2.emptyDict + Py2.u("_metadata") + Py2.int(9) + Py2.setitem + Py2.build + Py2.stop
        var g = try decode(b)
        let before = keysAndInts(g)
        g.removeDictEntry(g.root, key: g.dictEntries(g.root)![0].key)
        #expect(keysAndInts(g).map(\.0) == ["b"])
        guard case .object(let o) = g[g.root] else { Issue.record("root is not an object"); return }
        #expect(g.sequence(o.args)?.isEmpty == true)
        #expect(o.state != nil)
        let again = try decode(try PickleEncoder.encode(g))
        #expect(keysAndInts(again).map(\.0) == ["b"])
        #expect(before.count == 2)
    }

    @Test func python2StrIsDecodedAsUTF8LikeTorchLoad() throws {
        let ok = try decode(Py2.proto + Py2.u(Array("café".utf8)) + Py2.stop)
        #expect(ok.string(ok.root) == "café")
        let long = [UInt8](repeating: 0x61, count: 300)
        let binstring = try decode(Py2.proto + [0x54] + [44, 1, 0, 0] + long + Py2.stop)  // BINSTRING, 300 bytes
        #expect(binstring.string(binstring.root)?.utf8.count == 300)
        // Latin-1 bytes: torch.load (encoding='utf-8', strict) raises UnicodeDecodeError.
        #expect(throws: PickleError.self) { try decode(Py2.proto + Py2.u([0x63, 0x61, 0x66, 0xE9]) + Py2.stop) }
        #expect(throws: PickleError.self) { try decode(Array("S'caf\\xe9'\n.".utf8)) }
        let text = try decode(Array("S'caf\\xc3\\xa9'\n.".utf8))
        #expect(text.string(text.root) == "café")
    }

    @Test func scannerGoesOnPastANonUTF8StrAndRefusesWeightsOnly() {
        let b = Py2.proto + Py2.u([0xE9]) + Py2.global("torch", "FloatStorage") + [0x86] + Py2.stop
        let s = PickleScanner.scan(b, label: "t")
        #expect(s.error == nil)
        #expect(s.globals.map(\.fullName) == ["torch.FloatStorage"])
        #expect(s.weightsOnlyRefusal?.contains("UTF-8") == true)
    }

    @Test func tarHeaderChecksumAndNumbers() throws {
        var block = [UInt8](repeating: 0, count: 512)
        for (i, c) in "pickle".utf8.enumerated() { block[i] = c }
        for (i, c) in "00000000017\0".utf8.enumerated() { block[124 + i] = c }
        block[156] = UInt8(ascii: "0")
        let sum = 256 + block.enumerated().filter { !(148..<156).contains($0.offset) }.reduce(0) { $0 + Int($1.element) }
        for (i, c) in (String(sum, radix: 8).leftPad(6) + "\0 ").utf8.enumerated() { block[148 + i] = c }
        let h = try LegacyTarReader.header(block)
        #expect(h?.name == "pickle")
        #expect(h?.size == 15)
        block[0] = UInt8(ascii: "q")
        #expect(throws: CheckpointError.self) { try LegacyTarReader.header(block) }
        #expect(try LegacyTarReader.header([UInt8](repeating: 0, count: 512)) == nil)
        #expect(try LegacyTarReader.number([0x80, 0, 0, 1, 0][...]) == 256)
    }
}

@Suite struct LegacyOldTorchCutTests {
    /// Every prefix of a Python 2 era `.pth` fails to open with a CheckpointError. A tar prefix opens only when
    /// Python's tarfile (and so torch.load) reads the same members from it: when it holds all of them (the tar's
    /// closing zero blocks are optional), and then with the same tensors. Never a crash, never a partial success.
    @Test(arguments: ["legacy/py2-torch03-sd.pth", "legacy/torch01-tar.pt"])
    func cutAtEveryOffset(_ name: String) throws {
        let data = try Data(contentsOf: URL(fileURLWithPath: Oracle.fixture(name)))
        let full = try Checkpoint(path: Oracle.fixture(name))
        let want = try full.graph.stateDict(full.graph.root).map { "\($0.name) \($0.tensor.shape)" }
        let dir = try Oracle.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("cut.pt").path
        var opened: [Int] = []
        for n in 0..<data.count {
            try data.prefix(n).write(to: URL(fileURLWithPath: path))
            guard let c = try? Checkpoint(path: path) else { continue }
            opened.append(n)
            #expect(try c.graph.stateDict(c.graph.root).map { "\($0.name) \($0.tensor.shape)" } == want)
        }
        if name.hasSuffix(".pth") {
            #expect(opened.isEmpty)
        } else {
            // Exactly the cuts after the last member's data: tarfile stops at a short header.
            let file = try FileRange.open(Oracle.fixture(name))
            defer { try? file.close() }
            let end = try LegacyTarReader.listMembers(file, size: UInt64(data.count)).map { Int($0.offset + $0.size) }.max()!
            #expect(opened == Array(end..<data.count))
        }
    }
}

private extension String {
    func leftPad(_ n: Int) -> String { String(repeating: "0", count: max(0, n - count)) + self }
}
