/// A JSON value with ordered object keys, for `--json` output that reads in a stable order.
public indirect enum JSONValue: Equatable, Sendable {
    case null
    case bool(Bool)
    case int(Int64)
    /// An integer too large for Int64, as decimal digits.
    case bigInt(String)
    case double(Double)
    case string(String)
    case array([JSONValue])
    case object([(String, JSONValue)])

    public static func == (a: JSONValue, b: JSONValue) -> Bool { a.rendered() == b.rendered() }

    /// The value as JSON text; `indent` > 0 pretty-prints.
    public func rendered(indent: Int = 2) -> String {
        var out = ""
        write(into: &out, indent: indent, level: 0)
        return out
    }

    private func write(into out: inout String, indent: Int, level: Int) {
        let pad = indent > 0 ? "\n" + String(repeating: " ", count: indent * (level + 1)) : ""
        let end = indent > 0 ? "\n" + String(repeating: " ", count: indent * level) : ""
        switch self {
        case .null: out += "null"
        case .bool(let b): out += b ? "true" : "false"
        case .int(let v): out += String(v)
        case .bigInt(let s): out += s
        case .double(let d):
            if d.isNaN { out += "\"nan\"" } else if d.isInfinite { out += d > 0 ? "\"inf\"" : "\"-inf\"" } else { out += "\(d)" }
        case .string(let s): out += JSONValue.quote(s)
        case .array(let items):
            if items.isEmpty { out += "[]"; return }
            // Arrays of scalars stay on one line.
            let flat = items.allSatisfy { if case .array = $0 { return false }; if case .object = $0 { return false }; return true }
            out += "["
            for (i, item) in items.enumerated() {
                if i > 0 { out += flat ? ", " : "," }
                if !flat { out += pad }
                item.write(into: &out, indent: flat ? 0 : indent, level: level + 1)
            }
            out += (flat ? "" : end) + "]"
        case .object(let pairs):
            if pairs.isEmpty { out += "{}"; return }
            out += "{"
            for (i, (k, v)) in pairs.enumerated() {
                if i > 0 { out += "," }
                out += pad + JSONValue.quote(k) + (indent > 0 ? ": " : ":")
                v.write(into: &out, indent: indent, level: level + 1)
            }
            out += end + "}"
        }
    }

    /// A JSON string literal as serde_json writes it (`\b`, `\f` and the usual short escapes, `\u00XX` for
    /// other control characters): one spelling for `--json` output and for safetensors headers. With `asciiOnly`,
    /// as Python's `json` writes it by default (`ensure_ascii`, `py_encode_basestring_ascii`): every character
    /// outside space...`~` as `\uxxxx` too (lowercase hex; UTF-16 surrogate pairs above the BMP).
    static func quote(_ s: String, asciiOnly: Bool = false) -> String {
        var out = "\""
        func escape(_ unit: UInt16) {
            let hex = String(unit, radix: 16)
            out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
        }
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\u{08}": out += "\\b"
            case "\u{0C}": out += "\\f"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if u.value < 0x20 || (asciiOnly && u.value > 0x7E) {
                    for unit in String(u).utf16 { escape(unit) }
                } else {
                    out.unicodeScalars.append(u)
                }
            }
        }
        return out + "\""
    }
}
