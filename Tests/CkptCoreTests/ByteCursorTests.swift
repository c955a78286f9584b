import Foundation
import Testing
@testable import CkptCore

/// The byte cursor every container header is read with: Python's `struct` and protobuf's own varint encoder are the
/// references for the values; the bounds and overflow checks are checked against the cursor's own region.
@Suite struct ByteCursorTests {
    /// Values packed by Python's struct module in both byte orders, with the values themselves.
    struct Packed: Decodable {
        var little: [UInt8]
        var big: [UInt8]
        var u16: [UInt16]
        var u32: [UInt32]
        var u64: [UInt64]
        var i32: [Int32]
        var i64: [Int64]
        var varints: [[UInt8]]
        var varintValues: [UInt64]
        /// For each width 1...8: values, and their bytes as `int.to_bytes` gives them in each order.
        var widths: [[UInt64]]
        var widthLittle: [[UInt8]]
        var widthBig: [[UInt8]]
    }

    static func packed() throws -> Packed {
        let code = """
        import json, random, struct
        from google.protobuf.internal.encoder import _VarintBytes
        r = random.Random(13)
        u16 = [0, 1, 0xFFFF] + [r.getrandbits(16) for _ in range(5)]
        u32 = [0, 1, 0xFFFFFFFF] + [r.getrandbits(32) for _ in range(5)]
        u64 = [0, 1, 2**64 - 1] + [r.getrandbits(64) for _ in range(5)]
        i32 = [0, -1, -2**31, 2**31 - 1] + [r.getrandbits(32) - 2**31 for _ in range(4)]
        i64 = [0, -1, -2**63, 2**63 - 1] + [r.getrandbits(64) - 2**63 for _ in range(4)]
        def pack(o):
            return list(b"".join(struct.pack(o + c, v) for c, vs in (("H", u16), ("I", u32), ("Q", u64), ("i", i32), ("q", i64)) for v in vs))
        vv = [0, 1, 127, 128, 300, 2**32, 2**63, 2**64 - 1] + [r.getrandbits(r.randrange(1, 65)) for _ in range(20)]
        ws = [[0, 2**(8 * w) - 1] + [r.getrandbits(8 * w) for _ in range(4)] for w in range(1, 9)]
        wl = [list(b"".join(v.to_bytes(w, "little") for v in vs)) for w, vs in enumerate(ws, 1)]
        wb = [list(b"".join(v.to_bytes(w, "big") for v in vs)) for w, vs in enumerate(ws, 1)]
        print(json.dumps(dict(little=pack("<"), big=pack(">"), u16=u16, u32=u32, u64=u64, i32=i32, i64=i64,
                              varints=[list(_VarintBytes(v)) for v in vv], varintValues=vv,
                              widths=ws, widthLittle=wl, widthBig=wb)))
        """
        return try JSONDecoder().decode(Packed.self, from: Oracle.run(code))
    }

    @Test func readsLittleAndBigEndianAsPythonStructPacks() throws {
        let p = try Self.packed()
        var le = ByteCursor(p.little), be = ByteCursor(p.big)
        for v in p.u16 {
            #expect(try le.u16le() == v)
            #expect(try be.u16be() == v)
        }
        for v in p.u32 {
            #expect(try le.u32le() == v)
            #expect(try be.u32be() == v)
        }
        for v in p.u64 {
            #expect(try le.u64le() == v)
            #expect(try be.u64be() == v)
        }
        for v in p.i32 {
            #expect(try le.i32le() == v)
            #expect(try be.integer(Int32.self, .big) == v)
        }
        for v in p.i64 {
            #expect(try le.i64le() == v)
            #expect(try be.integer(Int64.self, .big) == v)
        }
        #expect(le.isAtEnd && be.isAtEnd)
    }

    @Test func readsIntegersOfEveryWidthAsPythonToBytesWritesThem() throws {
        let p = try Self.packed()
        for (i, values) in p.widths.enumerated() {
            var le = ByteCursor(p.widthLittle[i]), be = ByteCursor(p.widthBig[i])
            for v in values {
                #expect(try le.uint(width: i + 1, .little) == v)
                #expect(try be.uint(width: i + 1, .big) == v)
            }
            #expect(le.isAtEnd && be.isAtEnd)
        }
        var c = ByteCursor([UInt8](repeating: 1, count: 16))
        #expect(throws: ByteCursor.Failure.badLength(offset: 0, length: 9)) { try c.uint(width: 9, .little) }
        #expect(throws: ByteCursor.Failure.badLength(offset: 0, length: 0)) { try c.uint(width: 0, .little) }
    }

    @Test func readsVarintsAsProtobufEncodesThem() throws {
        let p = try Self.packed()
        var all = ByteCursor(p.varints.flatMap { $0 })
        for (bytes, v) in zip(p.varints, p.varintValues) {
            var one = ByteCursor(bytes)
            #expect(try one.varint() == v)
            #expect(one.isAtEnd)
            #expect(try all.varint() == v)
        }
        #expect(all.isAtEnd)
        // Cut short: the last byte still has its continuation bit.
        for bytes in p.varints where bytes.count > 1 {
            var cut = ByteCursor(Array(bytes.dropLast()))
            #expect(throws: ByteCursor.Failure.self) { try cut.varint() }
        }
    }

    @Test func varintOfElevenBytesThrows() {
        var c = ByteCursor([UInt8](repeating: 0xFF, count: 11) + [0])
        #expect(throws: ByteCursor.Failure.varintTooLong(offset: 0)) { try c.varint() }
    }

    @Test(arguments: [1, 2, 4, 8])
    func readsPastTheEndThrowAndMoveNothing(width: Int) {
        for available in 0..<width {
            // The array is longer than the region: the region's end is what counts.
            var c = ByteCursor([UInt8](repeating: 7, count: width + 4), at: 2, end: 2 + available)
            let failure = ByteCursor.Failure.outOfBytes(offset: 2, wanted: width, available: available)
            switch width {
            case 1: #expect(throws: failure) { try c.u8() }
            case 2: #expect(throws: failure) { try c.u16le() }
            case 4: #expect(throws: failure) { try c.u32le() }
            default:
                #expect(throws: failure) { try c.u64le() }
                #expect(throws: failure) { try c.i64le() }
            }
            #expect(throws: failure) { try c.bytes(width) }
            #expect(throws: failure) { try c.skip(width) }
            #expect(throws: failure) { try c.sub(width) }
            #expect(c.offset == 2 && c.remaining == available)
        }
    }

    @Test func lengthsThatOverflowOrAreNegativeThrow() throws {
        var c = ByteCursor([1, 2, 3])
        try c.skip(1)
        #expect(throws: ByteCursor.Failure.badLength(offset: 1, length: Int.max)) { try c.skip(Int.max) }
        #expect(throws: ByteCursor.Failure.badLength(offset: 1, length: Int.max)) { try c.bytes(Int.max) }
        #expect(throws: ByteCursor.Failure.badLength(offset: 1, length: -1)) { try c.bytes(-1) }
        #expect(throws: ByteCursor.Failure.badLength(offset: 1, length: Int.min)) { try c.sub(Int.min) }
        #expect(c.offset == 1)
    }

    @Test func subCursorSpansOnlyItsField() throws {
        let bytes: [UInt8] = Array(0..<16)
        var c = ByteCursor(bytes)
        try c.skip(3)
        var field = try c.sub(5)
        #expect(c.offset == 8)
        #expect(Array(try field.bytes(5)) == Array(bytes[3..<8]))
        #expect(throws: ByteCursor.Failure.outOfBytes(offset: 8, wanted: 1, available: 0)) { try field.u8() }
    }

    @Test func offsetOutsideTheRegionGivesAnEmptyRegion() {
        for at in [-1, 5, Int.min, Int.max] {
            var c = ByteCursor([1, 2, 3, 4], at: at)
            #expect(c.remaining == 0)
            #expect(throws: ByteCursor.Failure.self) { try c.u8() }
        }
    }
}
