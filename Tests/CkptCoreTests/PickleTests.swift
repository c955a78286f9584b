import Foundation
import Testing
@testable import CkptCore

/// Python code that builds a collection of objects covering every pickle construct torch meets.
private let samples = #"""
import pickle, sys, collections, math, base64, json
shared = ["shared"]
selfref = [1, 2]
selfref.append(selfref)
od = collections.OrderedDict([("a", 1), ("b", [1.5, -0.0])])
od._metadata = {"": {"version": 1}}
objs = {
  "ints": [0, 1, 255, 256, 65535, 65536, -1, -2**31, 2**31 - 1, 2**31, 2**63 - 1, -2**63, 2**64, -2**64 - 1, 2**70, -2**70, 10**40, 128, -128, -129, 32768, -32768],
  "floats": [0.0, -0.0, 1.5, float("inf"), float("-inf"), 1e-310, 3.141592653589793],
  "nan": [float("nan")],
  "strings": ["", "a", "unicodé ✓ 🐍", "x" * 300, "line\nbreak"],
  "bytes": [b"", b"\x00\xff\x80abc", bytearray(b"ba"), bytearray()],
  "sets": [set(), {1, 2}, frozenset(), frozenset({"z"})],
  "nested": {"a": {"b": {"c": [(), (1,), (1, 2), (1, 2, 3), (1, 2, 3, 4)]}}},
  "shared": [shared, shared, {"k": shared}],
  "selfref": selfref,
  "od": od,
  "bools": [True, False, None],
  "complex": complex(1.5, -2),
  "many": list(range(2500)),
  "bigdict": {str(i): i for i in range(1200)},
}
out = {}
for name, obj in objs.items():
    out[name] = {str(p): base64.b64encode(pickle.dumps(obj, protocol=p)).decode() for p in range(6)}
json.dump(out, sys.stdout)
"""#

@Suite struct PickleTests {
    static let pickles: [String: [String: [UInt8]]] = {
        guard let data = try? Oracle.run(samples),
              let json = try? JSONSerialization.jsonObject(with: data) as? [String: [String: String]]
        else { return [:] }
        return json.mapValues { $0.mapValues { Array(Data(base64Encoded: $0)!) } }
    }()

    @Test func oracleProducedSamples() {
        #expect(Self.pickles.count >= 14)
    }

    /// CPython's protocol 2 pickles come back byte for byte after decode and encode.
    @Test(arguments: ["ints", "floats", "nan", "strings", "bytes", "sets", "nested", "shared", "selfref", "od",
                      "bools", "complex", "many", "bigdict"])
    func protocol2RoundTripIsByteIdentical(name: String) throws {
        let original = try #require(Self.pickles[name]?["2"])
        let graph = try PickleDecoder.decode(original)
        let again = try PickleEncoder.encode(graph)
        #expect(again == original, "\(name): re-encoded pickle differs from CPython's")
    }

    /// Every protocol decodes, and what we write (protocol 2) unpickles to an equal object in CPython.
    @Test(arguments: ["ints", "floats", "strings", "bytes", "sets", "nested", "shared", "od", "bools", "complex",
                      "many", "bigdict"])
    func everyProtocolDecodesAndReencodesEqual(name: String) throws {
        for proto in 0...5 {
            let original = try #require(Self.pickles[name]?[String(proto)])
            let graph = try PickleDecoder.decode(original)
            let again = try PickleEncoder.encode(graph)
            let check = """
            import pickle, sys, base64
            a = pickle.loads(base64.b64decode(sys.argv[1])); b = pickle.loads(base64.b64decode(sys.argv[2]))
            assert a == b, (a, b)
            if isinstance(a, dict) and hasattr(a, '_metadata'): assert a._metadata == b._metadata
            print('ok')
            """
            let out = try Oracle.run(check, [Data(original).base64EncodedString(), Data(again).base64EncodedString()])
            #expect(String(decoding: out, as: UTF8.self).contains("ok"), "protocol \(proto) of \(name)")
        }
    }

    @Test func sharedReferencesKeepIdentity() throws {
        let graph = try PickleDecoder.decode(try #require(Self.pickles["shared"]?["4"]))
        let items = try #require(graph.sequence(graph.root))
        #expect(items[0] == items[1])
        let inner = try #require(graph.lookup(items[2], "k"))
        #expect(inner == items[0])
    }

    @Test func recursiveListIsKept() throws {
        let graph = try PickleDecoder.decode(try #require(Self.pickles["selfref"]?["2"]))
        let items = try #require(graph.sequence(graph.root))
        #expect(items.last == graph.root)
    }

    @Test func bigIntegersAreExact() throws {
        let graph = try PickleDecoder.decode(try #require(Self.pickles["ints"]?["0"]))
        let items = try #require(graph.sequence(graph.root))
        let texts = items.map { id -> String in
            switch graph[id] {
            case .int(let v): return String(v)
            case .bigInt(let b): return BigInt.decimal(littleEndian: b)
            default: return "?"
            }
        }
        #expect(texts[12] == "18446744073709551616")
        #expect(texts[13] == "-18446744073709551617")
        #expect(texts[16] == "10000000000000000000000000000000000000000")
    }

    @Test func globalsAreNamesNeverResolved() throws {
        // os.system would run a shell in CPython; here it is only a name.
        let evil: [UInt8] = Array("cos\nsystem\n(S'echo hacked'\ntR.".utf8)
        let graph = try PickleDecoder.decode(evil)
        guard case .object(let o) = graph[graph.root] else { Issue.record("not an object"); return }
        #expect(graph.globalName(o.callable) == "os.system")
    }

    // MARK: - Failure modes

    @Test func truncatedAtEveryOffsetIsAnError() throws {
        let original = try #require(Self.pickles["od"]?["2"])
        for cut in 0..<original.count {
            #expect(throws: PickleError.self) { try PickleDecoder.decode(Array(original[..<cut])) }
        }
    }

    @Test func unknownOpcode() {
        #expect(throws: PickleError.unknownOpcode(0xFF, offset: 2)) { try PickleDecoder.decode([0x80, 2, 0xFF]) }
    }

    @Test func missingMemo() {
        #expect(throws: PickleError.missingMemo(index: 7, offset: 2)) { try PickleDecoder.decode([0x80, 2, 0x68, 7, 0x2E]) }
    }

    @Test func markNesting100000DeepIsRefused() {
        let bomb = [0x80, 2] + [UInt8](repeating: 0x28, count: 100_000) + [0x2E]
        #expect(throws: PickleError.self) { try PickleDecoder.decode(bomb) }
    }

    @Test func listNesting100000DeepDecodesButIsNotWalkedUnbounded() throws {
        // ]q0 ]a ]a ... : each new list appended into the previous one, 100,000 deep.
        var bytes: [UInt8] = [0x80, 2]
        for _ in 0..<100_000 { bytes += [0x5D] }
        for _ in 0..<99_999 { bytes += [0x61] }
        bytes += [0x2E]
        let graph = try PickleDecoder.decode(bytes)
        #expect(throws: PickleError.self) { try PickleEncoder.encode(graph) }
    }

    @Test func hugeDeclaredLengthIsTruncationNotAllocation() {
        // BINUNICODE claiming 4 GiB - 1 bytes.
        #expect(throws: PickleError.self) { try PickleDecoder.decode([0x80, 2, 0x58, 0xFF, 0xFF, 0xFF, 0x7F, 0x61]) }
    }

    @Test func stackGlobalWithNonStringOperandsIsRefused() {
        // K1 K2 STACK_GLOBAL
        #expect(throws: PickleError.self) { try PickleDecoder.decode([0x80, 4, 0x4B, 1, 0x4B, 2, 0x93, 0x2E]) }
    }

    @Test func badUTF8GlobalIsRefused() {
        #expect(throws: PickleError.self) { try PickleDecoder.decode([0x63, 0xFF, 0x0A, 0x61, 0x0A, 0x2E]) }
    }

    @Test func opcodesHaveUniqueBytes() {
        #expect(Set(Opcode.allCases.map(\.rawValue)).count == Opcode.allCases.count)
        #expect(Opcode.allCases.count == 68)
    }
}

/// torch's own pickles, from every committed fixture.
@Suite struct TorchPickleRoundTrip {
    static func dataPickle(_ name: String) throws -> [UInt8] {
        let zip = try ZipReader(path: Oracle.fixture(name))
        let entry = try #require(zip.entry(named: "data.pkl"))
        return try zip.readAll(entry, limit: 1 << 30)
    }

    /// Protocol 2 pickles written by torch.save come back byte for byte: sharing, memo order and all.
    @Test(arguments: ["yolov5s-train.pt", "ultralytics-train.pt", "resnet-sd.pt", "resnet-nested.pt", "mmlab-style.pt",
                      "dtypes.pt", "sd-proto2.pt", "quantized.pt", "yolov5s-nc3-init.pt", "sd-with-module-prefix.pt"])
    func torchPickleReencodesByteForByte(name: String) throws {
        let original = try Self.dataPickle(name)
        let again = try PickleEncoder.encode(try PickleDecoder.decode(original))
        #expect(again == original)
    }

    /// Protocols 4 and 5: decode, encode, decode gives the same graph (same shape, same sharing).
    @Test(arguments: ["sd-proto4.pt", "sd-proto5.pt"])
    func newerProtocolsKeepTheGraph(name: String) throws {
        let g1 = try PickleDecoder.decode(try Self.dataPickle(name))
        let g2 = try PickleDecoder.decode(try PickleEncoder.encode(g1))
        #expect(canonical(g1) == canonical(g2))
    }

    /// A description of the graph reachable from the root in which shared nodes are numbered by first visit.
    func canonical(_ g: PickleGraph) -> [String] {
        var number: [NodeID: Int] = [:]
        var out: [String] = []
        for id in g.reachable(from: g.root) { number[id] = number.count }
        for id in g.reachable(from: g.root) {
            let kids = g.children(of: id).map { String(number[$0]!) }.joined(separator: ",")
            var kind: String
            switch g[id] {
            case .string(let s): kind = "s:\(s)"
            case .int(let v): kind = "i:\(v)"
            case .global(let m, let n): kind = "g:\(m).\(n)"
            case .object(let o): kind = "o:\(o.construction)"
            case .set: kind = "set"
            case .tuple: kind = "tuple"
            case .list: kind = "list"
            case .dict: kind = "dict"
            case .persistent: kind = "persistent"
            case .bool(let b): kind = "b:\(b)"
            case .float(let d): kind = "f:\(d.bitPattern)"
            case .none: kind = "none"
            default: kind = "other"
            }
            out.append("\(kind)[\(kids)]")
        }
        return out
    }
}
