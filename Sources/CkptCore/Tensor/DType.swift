/// A torch dtype, named as torch names it without the `torch.` prefix.
public enum DType: String, CaseIterable, Sendable, Codable {
    case float16, bfloat16, float32, float64
    case uint8, int8, int16, int32, int64
    case uint16, uint32, uint64
    case bool
    case complex32, complex64, complex128
    case float8_e4m3fn, float8_e5m2, float8_e4m3fnuz, float8_e5m2fnuz, float8_e8m0fnu
    case float4_e2m1fn_x2
    case qint8, quint8, qint32, quint4x2, quint2x4
    case bits8, bits16, bits1x8, bits2x4, bits4x2
    case uint1, uint2, uint3, uint4, uint5, uint6, uint7
    case int1, int2, int3, int4, int5, int6, int7

    /// Bytes per element.
    public var itemSize: Int {
        switch self {
        case .bool, .uint8, .int8, .float8_e4m3fn, .float8_e5m2, .float8_e4m3fnuz, .float8_e5m2fnuz,
             .float8_e8m0fnu, .float4_e2m1fn_x2, .qint8, .quint8, .quint4x2, .quint2x4,
             .bits8, .bits1x8, .bits2x4, .bits4x2, .uint1, .uint2, .uint3, .uint4, .uint5, .uint6, .uint7,
             .int1, .int2, .int3, .int4, .int5, .int6, .int7: 1
        case .float16, .bfloat16, .int16, .uint16, .bits16: 2
        case .float32, .int32, .uint32, .complex32, .qint32: 4
        case .float64, .int64, .uint64, .complex64: 8
        case .complex128: 16
        }
    }

    /// Whether `.half()` converts it (real floating point types).
    public var isFloatingPoint: Bool {
        switch self {
        case .float16, .bfloat16, .float32, .float64, .float8_e4m3fn, .float8_e5m2, .float8_e4m3fnuz,
             .float8_e5m2fnuz, .float8_e8m0fnu: true
        default: false
        }
    }

    /// The legacy typed-storage class torch pickles for this dtype (`torch.HalfStorage`), if it has one.
    public var storageClass: String? {
        Self.storageClasses.first { $0.value == self }?.key
    }

    static let storageClasses: [String: DType] = [
        "HalfStorage": .float16, "BFloat16Storage": .bfloat16, "FloatStorage": .float32, "DoubleStorage": .float64,
        "ByteStorage": .uint8, "CharStorage": .int8, "ShortStorage": .int16, "IntStorage": .int32,
        "LongStorage": .int64, "BoolStorage": .bool, "ComplexFloatStorage": .complex64,
        "ComplexDoubleStorage": .complex128, "QInt8Storage": .qint8, "QUInt8Storage": .quint8,
        "QInt32Storage": .qint32, "QUInt4x2Storage": .quint4x2, "QUInt2x4Storage": .quint2x4,
    ]

    /// The dtype of a legacy storage class name (`HalfStorage`, with or without `torch.`).
    public init?(storageClass name: String) {
        let short = name.hasPrefix("torch.") ? String(name.dropFirst(6)) : name
        guard let d = Self.storageClasses[short] else { return nil }
        self = d
    }

    /// The dtype of a global such as `torch.float16` (the dtype argument of `_rebuild_tensor_v3`).
    public init?(torchGlobal name: String) {
        guard name.hasPrefix("torch.") else { return nil }
        let short = String(name.dropFirst(6))
        if let d = DType(rawValue: short) { self = d; return }
        switch short {
        case "half": self = .float16
        case "float": self = .float32
        case "double": self = .float64
        case "long": self = .int64
        case "int": self = .int32
        case "short": self = .int16
        case "cfloat": self = .complex64
        case "cdouble": self = .complex128
        case "chalf": self = .complex32
        default: return nil
        }
    }
}
