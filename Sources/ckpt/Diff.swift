import ArgumentParser
import CkptCore
import Foundation

struct Diff: ParsableCommand, OptionTexts {
    static let configuration = CommandConfiguration(
        commandName: "diff",
        abstract: "Show what differs between two checkpoints: records, tensors, and (--values) numbers.",
        discussion: """
        Records: added, removed and changed (epoch 5 -> -1, optimizer state -> None), with the paths inside a
        record that differ. Tensors: the state_dict of each record both files hold: only in A, only in B, another
        dtype or shape. With --values, every common tensor of equal shape is streamed and compared element by
        element in float64, whatever the two dtypes (an fp32 tensor and its fp16 copy are equal within --atol):
        close when |a - b| <= atol + rtol * |b| (torch.allclose's rule; exact by default); NaN equals NaN when both
        are NaN; infinities equal only themselves. A dtype or shape change is a difference even when the values
        are close.
        Exit status: 0 equal, 1 different, 2 trouble (as diff(1)).

        Examples:
          ckpt diff best.pt best-stripped.pt
          ckpt diff a.pt b.pt --record model --values
          ckpt diff model.pt model-fp16.pt --values --atol 1e-3
          ckpt diff best.pt best.onnx --values            # does the export carry the trained weights?
          ckpt diff ddp.pt best.onnx --map =module.       # B's names get A's prefix before pairing
        """)

    @Argument(help: "The first checkpoint (A).") var a: String
    @Argument(help: "The second checkpoint (B).") var b: String
    @OptionGroup var recordOption: RecordOption<Self>
    @Flag(help: "Compare tensor values too (streamed in chunks, in float64).") var values = false
    @Option(help: "Absolute tolerance for --values (default 0).") var atol: Double = 0
    @Option(help: "Relative tolerance for --values (default 0).") var rtol: Double = 0
    @Option(help: ArgumentHelp("Rename B's tensors by prefix before pairing, OLD=NEW (repeatable; the longest OLD wins).",
                               valueName: "OLD=NEW"))
    var map: [RenamePair] = []
    @OptionGroup var frameworkOption: FrameworkOption<Self>
    @OptionGroup var jsonOption: JSONOption<Self>

    static let record = "Compare only this record (a file without records is compared whole)."
    static let framework =
        "Follow this training framework's conventions in both files, not the detected ones (yolov5, ultralytics, ...)."

    func validate() throws {
        guard atol >= 0, rtol >= 0, atol.isFinite, rtol.isFinite else {
            throw ValidationError("--atol and --rtol must be finite and not negative")
        }
    }

    func run() throws {
        let ca = try Phase.reading(a).run { try frameworkOption.apply(to: Checkpoint(path: a)) }
        let cb = try Phase.reading(b).run { try frameworkOption.apply(to: Checkpoint(path: b)) }
        var o = DiffOptions()
        o.record = recordOption.record
        o.values = values || atol > 0 || rtol > 0
        o.atol = atol
        o.rtol = rtol
        o.map = map.map { ($0.old, $0.new) }
        let report = try Phase.reading(a).run { try DiffBuilder(a: ca, b: cb, options: o).build() }  // a FileError names A or B
        for n in report.viewNotes { note(n) }
        emit(jsonOption.json ? report.json.rendered() : report.table)
        if !report.isEqual { Foundation.exit(1) }
    }
}
