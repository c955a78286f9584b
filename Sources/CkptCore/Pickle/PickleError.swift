/// What can go wrong decoding or encoding a pickle. Each case names where.
public enum PickleError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The stream ended inside an opcode or before STOP.
    case truncated(offset: Int)
    /// A byte that is no pickle opcode.
    case unknownOpcode(UInt8, offset: Int)
    /// An opcode that needs more on the stack than there is, or the wrong kind of item.
    case badStack(opcode: String, offset: Int, reason: String)
    /// A malformed argument (bad number text, bad UTF-8, bad quoting).
    case badArgument(opcode: String, offset: Int, reason: String)
    /// A memo index that was never stored.
    case missingMemo(index: Int, offset: Int)
    /// A limit meant to stop hostile input was passed.
    case limitExceeded(what: String, limit: Int, offset: Int)
    /// An opcode this reader does not accept (extension registry, out-of-band buffers).
    case unsupported(opcode: String, offset: Int)
    /// A graph cannot be written as protocol 2.
    case unencodable(String)

    public var description: String {
        switch self {
        case .truncated(let o): "pickle ends early at byte \(o)"
        case .unknownOpcode(let b, let o): "unknown pickle opcode 0x\(String(b, radix: 16)) at byte \(o)"
        case .badStack(let op, let o, let r): "pickle opcode \(op) at byte \(o): \(r)"
        case .badArgument(let op, let o, let r): "pickle opcode \(op) at byte \(o): \(r)"
        case .missingMemo(let i, let o): "pickle refers to memo entry \(i) that was never stored (byte \(o))"
        case .limitExceeded(let w, let l, let o): "pickle exceeds the limit of \(l) \(w) at byte \(o)"
        case .unsupported(let op, let o): "pickle opcode \(op) at byte \(o) is not supported"
        case .unencodable(let r): "cannot write pickle: \(r)"
        }
    }
}
