import Testing
@testable import CkptCore

@Suite struct ProgressTests {
    /// A reporter on a clock the test moves, collecting what it writes.
    final class Harness {
        var time = 0.0
        var written: [String] = []
        lazy var reporter = ProgressReporter(label: "strip", total: 4_000_000_000, delay: 1, interval: 0.25,
                                             now: { [unowned self] in self.time }, write: { [unowned self] in self.written.append($0) })
    }

    @Test func silentBeforeTheDelayThenOneLineAtATime() {
        let h = Harness()
        _ = h.reporter
        h.time = 0.5
        h.reporter.update(100_000_000)
        #expect(h.written.isEmpty, "work shorter than the delay prints nothing")
        h.time = 2
        h.reporter.update(1_000_000_000)
        #expect(h.written == ["\rstrip: 1.0 GB of 4.0 GB (25%), 500.0 MB/s, 6 s left\u{1B}[K"])
        h.time = 2.1
        h.reporter.update(1_050_000_000)
        #expect(h.written.count == 1, "at most one line per interval")
        h.time = 2.3
        h.reporter.update(1_150_000_000)
        #expect(h.written.count == 2)
        h.reporter.finish()
        #expect(h.written.last == "\r\u{1B}[K", "finish erases the line")
    }

    @Test func finishWritesNothingWhenNothingWasShown() {
        let h = Harness()
        _ = h.reporter
        h.time = 0.2
        h.reporter.update(4_000_000_000)
        h.reporter.finish()
        #expect(h.written.isEmpty)
    }

    @Test func lineFigures() {
        #expect(ProgressReporter.line(label: "x", done: 0, total: 0, elapsed: 3) == "x: 0 B of 0 B")
        #expect(ProgressReporter.line(label: "x", done: 5_000, total: 10_000, elapsed: 0) == "x: 5.0 kB of 10.0 kB (50%)")
        #expect(ProgressReporter.line(label: "x", done: 20, total: 10, elapsed: 1) == "x: 10 B of 10 B (100%), 10 B/s, 0 s left")
        #expect(ProgressReporter.duration(59.2) == "1 min 00 s")
        #expect(ProgressReporter.duration(3_725) == "1 h 02 min")
    }
}
