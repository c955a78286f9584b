/// Reports how far long work has got, as one line rewritten in place: bytes done of the total, rate, time left.
///
/// Nothing is written before `delay` seconds have passed, so work that ends sooner prints nothing, and lines are
/// written at most every `interval` seconds, so calling ``update(_:)`` for every chunk costs a clock read.
/// ``finish()`` erases the line. The reporter does not decide whether to report: the CLI creates one only when
/// stderr is a terminal and `--quiet` is not given.
///
/// Long-running commands hook in by taking a `progress: (Int64) -> Void` callback that receives the bytes done so
/// far (as ``Checkpoint/write(_:sources:to:chunkSize:progress:)`` does) and passing ``update(_:)``.
public final class ProgressReporter {
    /// What is being done, printed first (`strip`).
    public let label: String
    /// Bytes the work will have done when it ends.
    public let total: Int64
    private let delay: Double
    private let interval: Double
    private let now: () -> Double
    private let write: (String) -> Void
    private let start: Double
    private var lastWrite: Double?

    /// - Parameters:
    ///   - now: seconds on a monotonic clock (injectable for tests).
    ///   - write: where the text goes (the CLI writes it to stderr unbuffered).
    public init(label: String, total: Int64, delay: Double = 1, interval: Double = 0.25,
                now: @escaping () -> Double = ProgressReporter.monotonicSeconds,
                write: @escaping (String) -> Void)
    {
        self.label = label
        self.total = max(0, total)
        self.delay = delay
        self.interval = interval
        self.now = now
        self.write = write
        start = now()
    }

    /// Notes that `done` bytes are done; rewrites the line when it is time to.
    public func update(_ done: Int64) {
        let t = now()
        let elapsed = t - start
        guard elapsed >= delay else { return }
        if let last = lastWrite, t - last < interval, done < total { return }
        lastWrite = t
        write("\r" + Self.line(label: label, done: done, total: total, elapsed: elapsed) + "\u{1B}[K")
    }

    /// Erases the line, if one was written.
    public func finish() {
        if lastWrite != nil { write("\r\u{1B}[K") }
        lastWrite = nil
    }

    /// `strip: 1.2 GB of 5.4 GB (22%), 310 MB/s, 14 s left`.
    public static func line(label: String, done: Int64, total: Int64, elapsed: Double) -> String {
        let done = min(max(0, done), total)
        var text = "\(label): \(Figures.bytes(done)) of \(Figures.bytes(total))"
        if total > 0 { text += " (\(done * 100 / total)%)" }
        if elapsed > 0, done > 0 {
            let rate = Double(done) / elapsed
            text += ", \(Figures.bytes(Int64(rate)))/s"
            let left = Double(total - done) / rate
            text += ", " + duration(left) + " left"
        }
        return text
    }

    /// `14 s`, `3 min 05 s`, `1 h 02 min`.
    static func duration(_ seconds: Double) -> String {
        let s = Int(seconds.rounded(.up))
        if s < 60 { return "\(s) s" }
        if s < 3600 { return "\(s / 60) min \(s % 60 < 10 ? "0" : "")\(s % 60) s" }
        let m = (s % 3600) / 60
        return "\(s / 3600) h \(m < 10 ? "0" : "")\(m) min"
    }

    /// Seconds on the monotonic clock, from an arbitrary start.
    public static func monotonicSeconds() -> Double {
        let c = epoch.duration(to: .now).components
        return Double(c.seconds) + Double(c.attoseconds) / 1e18
    }

    private static let epoch = ContinuousClock.now
}
