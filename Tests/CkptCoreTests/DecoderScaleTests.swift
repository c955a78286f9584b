import Foundation
import Testing
@testable import CkptCore

/// The decoder's memo (dense array plus sparse overflow) and flat MARK stack, on hand-made pickles that no
/// pickler writes, checked against CPython's own unpickling of the same bytes.
@Suite struct DecoderMemoAndMarkTests {
    /// name -> base64 pickle, made by hand in Python.
    static let handMade: [String: [UInt8]] = {
        let code = #"""
        import base64, json, struct, sys
        def put(i): return b'q' + bytes([i]) if i < 256 else b'r' + struct.pack('<I', i)
        def get(i): return b'h' + bytes([i]) if i < 256 else b'j' + struct.pack('<I', i)
        P = b'\x80\x02'
        cases = {
            # the outer list goes to memo 100000 (sparse), the inner one to 7 (dense), then both are fetched
            "sparse": P + b']' + put(100000) + b'(K\x01]' + put(7) + get(100000) + get(7) + get(7) + b'e.',
            # indices written downwards, and one index written twice: the second value wins
            "downwards": P + b'(K\x09' + put(9) + b'K\x08' + put(8) + b'K\x03' + put(3) + b'K\x04' + put(3)
                         + get(9) + get(8) + get(3) + b'l.',
            # a dense run past 255 (BINPUT then LONG_BINPUT), then a gap of 1000 that stays dense
            "dense": P + b'(' + b''.join(b'K' + bytes([i % 256]) + put(i) for i in range(300)) + b'K\x63' + put(1299)
                     + get(0) + get(299) + get(1299) + b'l.',
            # nested MARKs: an inner tuple built inside a list's frame, POP_MARK discarding a frame, POP of the frame
            "marks": P + b'(K\x01(K\x02K\x03t(K\x09K\x0910K\x04(0l.',
        }
        json.dump({k: base64.b64encode(v).decode() for k, v in cases.items()}, sys.stdout)
        """#
        guard let data = try? Oracle.run(code),
              let json = try? JSONSerialization.jsonObject(with: data) as? [String: String]
        else { return [:] }
        return json.mapValues { Array(Data(base64Encoded: $0)!) }
    }()

    @Test(arguments: ["sparse", "downwards", "dense", "marks"])
    func handMadePicklesDecodeAsCPythonDoes(name: String) throws {
        let original = try #require(Self.handMade[name])
        let again = try PickleEncoder.encode(try PickleDecoder.decode(original))
        let check = """
        import pickle, sys, base64
        a = pickle.loads(base64.b64decode(sys.argv[1])); b = pickle.loads(base64.b64decode(sys.argv[2]))
        assert repr(a) == repr(b), (a, b)
        if isinstance(a, list) and len(a) > 2 and isinstance(a[1], list):  # "sparse": shared objects stay shared
            assert b[2] is b and b[1] is b[3] is b[4], b
        print(repr(b))
        """
        let out = try Oracle.run(check, [Data(original).base64EncodedString(), Data(again).base64EncodedString()])
        #expect(!out.isEmpty)
    }

    @Test func getBelowTheFrameAfterMarkIsAnError() {
        // K1 MARK POP POP POP: the first POP finds its frame empty and pops the MARK (CPython's pop_mark), the
        // second takes the 1, the third has nothing.
        #expect(throws: PickleError.self) { try PickleDecoder.decode([0x80, 2, 0x4B, 1, 0x28, 0x30, 0x30, 0x30, 0x2E]) }
        // MARK then TUPLE1: TUPLE1 cannot take the item below the mark.
        #expect(throws: PickleError.self) { try PickleDecoder.decode([0x80, 2, 0x4B, 1, 0x28, 0x85, 0x2E]) }
    }

    @Test func memoLimitCountsEntriesNotIndices() throws {
        var limits = PickleLimits()
        limits.maxMemo = 2
        // ]q\x00 ]r<1000000> : two entries, far apart: fine.
        let two: [UInt8] = [0x80, 2, 0x5D, 0x71, 0, 0x5D, 0x72, 0x40, 0x42, 0x0F, 0x00, 0x86, 0x2E]
        _ = try PickleDecoder.decode(two, limits: limits)
        // A third distinct index is refused; writing index 0 again is not a new entry.
        let three: [UInt8] = [0x80, 2, 0x5D, 0x71, 0, 0x5D, 0x71, 5, 0x5D, 0x71, 6, 0x87, 0x2E]
        #expect(throws: PickleError.self) { try PickleDecoder.decode(three, limits: limits) }
        let again: [UInt8] = [0x80, 2, 0x5D, 0x71, 0, 0x5D, 0x71, 0, 0x5D, 0x71, 6, 0x87, 0x2E]
        _ = try PickleDecoder.decode(again, limits: limits)
    }
}

/// The one-pass name check agrees with the component-splitting definition it replaced.
@Suite struct ZipNameTests {
    static func reference(_ name: String) -> Bool {
        if name.isEmpty { return false }
        let bytes = Array(name.utf8)
        if bytes.contains(0) || bytes.contains(UInt8(ascii: "\\")) { return false }
        if bytes.first == UInt8(ascii: "/") { return false }
        if bytes.count >= 2, bytes[1] == UInt8(ascii: ":"), (bytes[0] | 0x20) >= UInt8(ascii: "a"),
            (bytes[0] | 0x20) <= UInt8(ascii: "z"), bytes.count == 2 || bytes[2] == UInt8(ascii: "/")
        {
            return false
        }
        var components = name.split(separator: "/", omittingEmptySubsequences: false)
        if components.count > 1, components.last == "" { components.removeLast() }
        return !components.contains { $0.isEmpty || $0 == "." || $0 == ".." }
    }

    @Test func agreesWithTheSplittingDefinitionOnEveryShortName() {
        // Every name of up to 5 characters over the characters that matter.
        let alphabet: [String] = ["a", "B", "1", ".", "/", ":", "\\", "\u{0}", "é"]
        var names = [""]
        var frontier = [""]
        for _ in 0..<5 {
            frontier = frontier.flatMap { p in alphabet.map { p + $0 } }
            names += frontier
        }
        #expect(names.count > 19_000)
        for name in names {
            #expect(ZipNames.isSafe(name) == Self.reference(name), "\(Array(name.utf8))")
        }
    }
}
