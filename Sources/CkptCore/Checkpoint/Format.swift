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
        var widths = [Int](repeating: 0, count: width)
        for r in rows { for (i, c) in r.enumerated() { widths[i] = max(widths[i], c.count) } }
        return rows.map { r in
            r.enumerated().map { i, c in i == r.count - 1 ? c : c + String(repeating: " ", count: widths[i] - c.count) }
                .joined(separator: "  ").replacingTrailingSpaces()
        }.joined(separator: "\n")
    }
}

extension String {
    func replacingTrailingSpaces() -> String {
        var s = self
        while s.last == " " { s.removeLast() }
        return s
    }
}
