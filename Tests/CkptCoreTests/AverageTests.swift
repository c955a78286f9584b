import Foundation
import Testing
@testable import CkptCore

/// `ckpt average`'s planning (issue 16). The interop tests compare its output with torch's reference of the rule; these
/// pin the weights' checks and how a plan maps storages of the inputs.
@Suite struct AverageTests {
    /// The F16C conversions ckpt average uses give Swift's (compiler-rt's) bits: every float16 to float32, and
    /// float32 to float16 over a stride through every exponent, both signs, halfway cases and NaN payloads.
    @Test(.enabled(if: Float16Conversion.hardware, "only this CPU path differs from Swift's"))
    func hardwareFloat16ConversionsEqualSwifts() {
        let halves = (0...UInt16.max).map { $0 }
        var floats = [Float](repeating: 0, count: halves.count)
        halves.withUnsafeBufferPointer { h in
            floats.withUnsafeMutableBufferPointer { Float16Conversion.toFloat(h.baseAddress!, $0.baseAddress!, h.count) }
        }
        for (h, f) in zip(halves, floats) {
            #expect(f.bitPattern == Float(Float16(bitPattern: h)).bitPattern, "\(h)")
        }
        var bits: [UInt32] = stride(from: UInt32(0), to: UInt32.max - 4099, by: 4099).map { $0 }
        for e: UInt32 in 100...150 {  // around float16's range: halfway and subnormal cases, exactly
            for m: UInt32 in [0, 1, 0x0FFF, 0x1000, 0x1001, 0x2000, 0x3000, 0x7F_FFFF] { bits += [e << 23 | m, 1 << 31 | e << 23 | m] }
        }
        bits += [0x7F80_0000, 0xFF80_0000, 0x7FC0_0000, 0x7F80_0001, 0xFFC1_2345, 0x7FBF_FFFF]
        let src = bits.map { Float(bitPattern: $0) }
        var got = [UInt16](repeating: 0, count: src.count)
        src.withUnsafeBufferPointer { s in
            got.withUnsafeMutableBufferPointer { Float16Conversion.fromFloat(s.baseAddress!, $0.baseAddress!, s.count) }
        }
        var differ = 0
        for (f, h) in zip(src, got) where h != Float16(f).bitPattern { differ += 1 }
        #expect(differ == 0, "of \(src.count) floats")
    }

    @Test func weightsDefaultToEqualAndMustBePositiveFiniteOnePerInput() throws {
        #expect(try Checkpoint.averageWeights(nil, inputs: 3) == [1, 1, 1])
        #expect(try Checkpoint.averageWeights([0.5, 2], inputs: 2) == [0.5, 2])
        for bad in [[0.0, 1], [-1.0, 1], [.nan, 1], [.infinity, 1], [1.0], [1.0, 1, 1], [.greatestFiniteMagnitude, .greatestFiniteMagnitude]] {
            #expect(throws: CheckpointError.self, "\(bad)") { try Checkpoint.averageWeights(bad, inputs: 2) }
        }
    }

    /// A file averaged with itself: every floating storage of the weights record is averaged from both inputs' storage
    /// of the same key; the others (integers, tensors outside the state dict) are the last input's, as strip plans them.
    @Test(arguments: ["yolov5s-train.pt", "ultralytics-train.pt", "resnet-sd.pt", "dtypes.pt"])
    func aFileWithItselfMapsEveryStorageToItsOwn(name: String) throws {
        let path = Oracle.fixture(name)
        let inputs = [try Checkpoint(path: path), try Checkpoint(path: path)]
        let sources = inputs.map { AverageInput(path: $0.path, file: name, sha256: "", weight: 1) }
        var options = AverageOptions()
        options.useEMA = true
        let (plan, report): (SurgeryPlan, AverageReport)
        do { (plan, report) = try Checkpoint.planAverage(inputs, sources, options: options) } catch let e as FileError {
            // dtypes.pt holds float8 and complex tensors: refused, naming the tensor, never averaged as something else.
            #expect(name == "dtypes.pt", "\(e)")
            return
        }
        let strip = try inputs[1].planStrip({ var o = StripOptions(); o.useEMA = true; return o }())
        #expect(plan.storages.count == strip.storages.count)
        var averaged = 0
        for (s, t) in zip(plan.storages, strip.storages) {
            #expect(s.source == 1 && s.key == t.key && s.sourceKey == t.sourceKey && s.numel == t.numel)
            if let a = s.average {
                averaged += 1
                #expect(a.parts == [.init(source: 0, key: t.sourceKey), .init(source: 1, key: t.sourceKey)])
                #expect(StorageAverager.averaged.contains(s.dtype))
            }
        }
        #expect(averaged == report.averagedStorages && averaged > 0)
        #expect(plan.sourceBytes > strip.sourceBytes)
    }
}
