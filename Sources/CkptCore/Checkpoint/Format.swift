/// Human-readable figures for tables.
public enum Figures {
    /// Bytes as `15.3 MB` (decimal units, as YOLOv5 prints file sizes).
    public static func bytes(_ n: Int64) -> String {
        let units = ["B", "kB", "MB", "GB", "TB"]
        var v = Double(n), u = 0
        while v >= 1000 && u < units.count - 1 { v /= 1000; u += 1 }
        return u == 0 ? "\(n) B" : "\(oneDecimal(v)) \(units[u])"
    }

    /// Counts as `1.87M`, `342`, `12.5K`.
    public static func count(_ n: Int64) -> String {
        if n < 1000 { return String(n) }
        if n < 1_000_000 { return "\(oneDecimal(Double(n) / 1e3))K" }
        if n < 1_000_000_000 { return "\(twoDecimals(Double(n) / 1e6))M" }
        return "\(twoDecimals(Double(n) / 1e9))B"
    }

    static func oneDecimal(_ v: Double) -> String {
        let r = (v * 10).rounded() / 10
        return r == r.rounded() ? "\(Int(r)).0" : "\(r)"
    }

    static func twoDecimals(_ v: Double) -> String {
        let r = Int((v * 100).rounded())
        let frac = r % 100
        return "\(r / 100).\(frac < 10 ? "0" : "")\(frac)"
    }

    /// Rows padded into aligned columns, two spaces apart; the last column is not padded.
    public static func table(_ rows: [[String]]) -> String {
        guard let width = rows.map(\.count).max() else { return "" }
        let lengths = rows.map { $0.map(characterCount) }
        var widths = [Int](repeating: 0, count: width)
        for r in lengths { for (i, n) in r.enumerated() { widths[i] = max(widths[i], n) } }
        // Built as UTF-8 bytes: String appends cost more than the rest of `ckpt keys` on a big model.
        var out: [UInt8] = []
        out.reserveCapacity(rows.count * (widths.reduce(0, +) + 2 * width + 1))
        for (ri, r) in rows.enumerated() {
            if ri > 0 { out.append(0x0A) }
            let lineStart = out.count
            for (i, cell) in r.enumerated() {
                if i > 0 { out.append(0x20); out.append(0x20) }
                var cell = cell
                cell.withUTF8 { out.append(contentsOf: $0) }
                if i < r.count - 1 { out.append(contentsOf: repeatElement(0x20, count: widths[i] - lengths[ri][i])) }
            }
            while out.count > lineStart, out.last == 0x20 { out.removeLast() }
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// `s.count`, without the grapheme walk when the text is ASCII other than CR (tables of thousands of tensor
    /// names; "\r\n" is one character).
    static func characterCount(_ s: String) -> Int {
        var s = s
        let ascii = s.withUTF8 { $0.allSatisfy { $0 < 0x80 && $0 != 0x0D } }
        return ascii ? s.utf8.count : s.count
    }
}

extension String {
    func replacingTrailingSpaces() -> String {
        var s = self
        while s.last == " " { s.removeLast() }
        return s
    }
}
