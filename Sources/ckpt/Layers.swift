import ArgumentParser
import CkptCore

struct Layers: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "layers",
        abstract: "Show a model's layers and what YOLOv5's --freeze would freeze.",
        discussion: """
        YOLO models (module objects): one row a layer as parse_model built it (index, from, repeats, parameters,
        module, yaml arguments; backbone or head as the model's yaml lists it). Other weights: one row per top-level
        key prefix. In a plain state dict, BatchNorm statistics and anchors count as buffers, the rest as parameters.
        --freeze N marks the parameters YOLOv5 train.py's --freeze N freezes: names containing model.0. ...
        model.{N-1}. (several values, --freeze 0 1 2, freeze those layers), with frozen and trainable counts.

        Examples:
          ckpt layers yolov5s.pt
          ckpt layers yolov5s.pt --freeze 10
        """)

    @Argument(help: "The checkpoint.") var file: String
    @Option(help: "Record to read (default: model, else ema, else state_dict, else the file itself).")
    var record: String?
    @Option(parsing: .upToNextOption, help: "YOLOv5's --freeze: N (layers 0..N-1) or a list of layer indices.")
    var freeze: [Int] = []
    @Flag(help: "Print JSON.") var json = false

    func run() throws {
        let table = try reporting(file) {
            try Checkpoint(path: file).layers(record: record, freeze: freeze.isEmpty ? nil : freeze)
        }
        emit(json ? table.json.rendered() : table.table)
    }
}
