import ArgumentParser
import CkptCore
import Foundation

struct Transfer: ParsableCommand, OptionTexts {
    static let configuration = CommandConfiguration(
        commandName: "transfer",
        abstract: "Carry pretrained weights into a model: every tensor whose name and shape match is copied.",
        discussion: """
        OUT is INTO with each tensor of FROM's state_dict whose key and shape match copied in and cast to INTO's
        dtype, as YOLOv5's intersect_dicts does before fine-tuning (a new head keeps INTO's weights). FROM and
        INTO may be module-object checkpoints or state dicts. Every key not transferred is listed with its reason.
        --exclude takes a substring (YOLOv5 uses 'anchor' when anchors are given) or a glob.

        Examples:
          ckpt transfer yolov5s.pt nc3-init.pt nc3-start.pt
          ckpt transfer yolov5s.pt nc3-init.pt nc3-start.pt --exclude anchor
        """)

    @Argument(help: "The checkpoint with the pretrained weights (never modified).") var from: String
    @Argument(help: "The checkpoint that receives them (never modified).") var into: String
    @Argument(help: "Where to write INTO with FROM's weights.") var out: String
    @Option(help: "Keys not to transfer: a substring or a glob (repeatable).") var exclude: [String] = []
    @Option(name: .customLong("from-record"), help: "FROM's record to read (default: model, else ema, ...).")
    var fromRecord: String?
    @Option(name: .customLong("into-record"), help: "INTO's record to fill (default: model, else ema, ...).")
    var intoRecord: String?
    @OptionGroup var frameworkOption: FrameworkOption<Self>
    @OptionGroup var rewriteOptions: RewriteOptions<Self>
    @OptionGroup var jsonOption: JSONOption<Self>

    static let dryRun = "Report what would be transferred; write nothing."
    static let allowUnsafe =
        "Rewrite even if FROM's or INTO's pickle names dangerous globals (INTO's are copied unchanged)."
    static let json = "Print the report as JSON."
    static let framework =
        "Follow this training framework's conventions in FROM and INTO, not the detected ones (yolov5, ultralytics, ...)."

    var dryRun: Bool { rewriteOptions.dryRun }

    func run() throws {
        let f = try Phase.reading(from).run { try frameworkOption.apply(to: rewriteOptions.open(from)) }
        let i = try Phase.reading(into).run { try frameworkOption.apply(to: rewriteOptions.open(into)) }
        var o = TransferOptions()
        o.exclude = exclude
        o.fromRecord = fromRecord
        o.intoRecord = intoRecord
        let out = try Phase.preparing(self.out).run { try AtomicOutput.destination(for: self.out, input: into) }
        try Phase.preparing(out).run { try OutputFormat.requireTorch(path: out, command: "transfer") }
        let (plan, report) = try Phase.reading(into).run { try i.planTransfer(from: f, o) }  // a FileError names FROM or INTO
        if !dryRun {
            try Phase.writing(out, from: into).run {  // a FileError names FROM or INTO; other read faults are INTO's
                try Checkpoint.write(.torch(plan), sources: [i, f], to: out)
            }
        }
        emit(jsonOption.json ? json(report, out: out) : text(report, out: out))
    }

    func text(_ r: TransferReport, out: String) -> String {
        var lines = [r.headline]
        let target = (r.intoRecord.map { "\(into) (\($0))" } ?? into)
        lines.append(dryRun ? "would write \(out): \(target) with FROM's weights; nothing written"
                            : "wrote \(out): \(target) with FROM's weights")
        for c in r.casts { lines.append("  \(c.count) tensors cast \(c.from.rawValue) -> \(c.to.rawValue)") }
        if !r.skipped.isEmpty {
            lines.append("")
            lines.append(Figures.table([["not transferred", "reason"]] + r.skipped.map { [$0.key, $0.reason] }))
        }
        if !r.unused.isEmpty {
            lines.append("")
            lines.append("\(r.unused.count) keys of FROM not in INTO: \(r.unused.prefix(6).joined(separator: ", "))"
                         + (r.unused.count > 6 ? ", ..." : ""))
        }
        return lines.joined(separator: "\n")
    }

    func json(_ r: TransferReport, out: String) -> String {
        JSONValue.object([
            ("from", .string(r.from)), ("into", .string(r.into)), ("output", .string(out)), ("dry_run", .bool(dryRun)),
            ("from_record", r.fromRecord.map { .string($0) } ?? .null),
            ("into_record", r.intoRecord.map { .string($0) } ?? .null),
            ("transferred", .int(Int64(r.transferred.count))), ("total", .int(Int64(r.total))),
            ("transferred_keys", .array(r.transferred.map { .string($0) })),
            ("not_transferred", .array(r.skipped.map { .object([("key", .string($0.key)), ("reason", .string($0.reason))]) })),
            ("unused_from", .array(r.unused.map { .string($0) })),
            ("casts", .array(r.casts.map {
                .object([("from", .string($0.from.rawValue)), ("to", .string($0.to.rawValue)), ("tensors", .int(Int64($0.count)))])
            })),
        ]).rendered()
    }
}
